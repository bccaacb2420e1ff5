"""runtime.memory: freed heap pages go back to the operating system; values never change."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hierfedlora.runtime.memory import release_freed_memory

# A child process, so that this process's heap (and other tests' garbage) cannot blur the figures: 64 MiB of
# 64 KiB blocks (under glibc's mmap threshold, so they come from the heap), all freed but the last, which pins
# the heap's top so that free() alone cannot give the pages back.
_CHILD = """
import gc, sys
from hierfedlora.runtime.memory import release_freed_memory
def rss_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
blocks = [bytearray(65536) for _ in range(1024)]
pin = blocks[-1]
del blocks
gc.collect()
before = rss_kib()
released = release_freed_memory()
print(released, before - rss_kib())
"""


def test_release_freed_memory_returns_freed_heap_pages():
    """After 64 MiB of heap blocks are freed behind a live one, releasing gives most of them back to the OS."""
    # Arrange
    if not release_freed_memory():
        pytest.skip("not glibc: there is no malloc_trim to call")
    # Act
    done = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    released, dropped_kib = done.stdout.split()
    # Assert
    assert released == "True"
    assert int(dropped_kib) > 48 * 1024, f"resident set fell by only {dropped_kib} KiB"


def test_release_freed_memory_is_repeatable():
    """A second call right after the first finds nothing to do and still succeeds (no state, no error)."""
    # Act
    first, second = release_freed_memory(), release_freed_memory()
    # Assert
    assert first == second
