"""Ctrl-C during a run: the round in progress finishes and commits, then the run stops.

:func:`_sigint_deferred` turns SIGINT into a flag the round loop (``runtime.engine``) checks after each
commit; a second Ctrl-C stops at once, the last commit standing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

__all__: list[str] = []

log = logging.getLogger("hierfedlora.runtime.engine")  # the run loop's warning: its logger, as before the move


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[threading.Event]:
    """Turn Ctrl-C into a flag the round loop checks after committing (main thread only)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(_signum: int, _frame: object) -> None:
        if flag.is_set():  # a second Ctrl-C: stop now, the last commit stands
            raise KeyboardInterrupt
        log.warning("interrupt received: finishing and committing this round, then stopping")
        flag.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
