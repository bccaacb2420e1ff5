"""Give memory that the C allocator holds free back to the operating system (glibc's ``malloc_trim``).

Why the runtime needs this: torch's CPU tensors come from the C library's ``malloc``. glibc maps a block above
its mmap threshold on its own and unmaps it when freed, but then raises the threshold to that block's size (up
to 32 MiB), so from then on a training step's activations live in the heap. A step frees hundreds of megabytes
of them at once; free() gives pages back only from the heap's top, so the pages of freed blocks below live ones
stay resident. Measured on the 80-device planned round of ``tests/benchmarks/test_batched_bench.py``
(2026-12-06): after 8 training chunks glibc held 506 MiB free but resident beside 332 MiB in use, and resident
memory grew with every chunk. :func:`release_freed_memory` hands those pages back (``madvise``; the heap's
layout is unchanged, so nothing moves): the executor calls it once a task's chunks are trained (a group's
devices in one intra-group round), so resident memory then returns to what is in use. Not after every chunk:
the chunks of one task have the same shapes and reuse the same free pages, while handing them back made every
chunk fault them in again (2026-12-06, the paper preset's FedLoRA rounds: 4.1 million minor faults against 1.1
million in 3 rounds, rounds 12% slower); the 80-device planned round of the benchmark peaked at 1.39 GB either
way (1.41 GB trimming after every chunk).

It changes no value: allocation addresses never reach a computation. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

__all__ = ["release_freed_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the process's own C library, or ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols already loaded: the process's C library
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_freed_memory() -> bool:
    """Return the allocator's free pages to the operating system; whether the C library could.

    Costs a walk over the heap's free blocks (well under a millisecond for a heap of a gigabyte),
    and a page fault later for each returned page that is used again.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
