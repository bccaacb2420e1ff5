"""A run folder's use: one writer at a time, a dead writer never blocks a resume, and a resume only
from what the folder really holds.

Exclusive use
-------------

:func:`lock_folder` takes an exclusive ``fcntl.flock`` on ``FOLDER/.lock`` for as long as its
context lasts and writes the holder's process id into the file. A second process (or a second
lock in the same process) that asks for the folder fails at once with an
:class:`~hierfedlora.planner.errors.InvalidInputError` naming the holder::

    out: a run folder no other process is using; got runs/a is in use by process 4242

The kernel drops a ``flock`` when its holder exits, however it exits (SIGKILL included), so a
lock file left by a dead process does not block the next run or a resume: its stale process id
is simply overwritten, and the temporary files of writes it never finished (``.NAME.XXXX.tmp``) are
deleted. The lock file itself stays in the folder; deleting it while another
process waits on it would let two writers in.

What a folder holds
-------------------
:func:`check_run_folder` refuses, before any model loads, a new run into a folder holding a run,
and a resume whose committed checkpoint is gone while its reports or tensors remain (restarting
from round 0 there would silently overwrite them). :func:`repair_report_log` brings a report log
to exactly the checkpoint's rounds without running anything (``ReportLog.open``'s repair, R2).

Examples
--------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> with lock_folder(folder):
...     try:
...         with lock_folder(folder):
...             pass
...     except InvalidInputError as err:
...         print("in use by process" in str(err))
True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError, Issue, StorageError
from hierfedlora.planner.outcomes import RoundReport
from hierfedlora.runtime.checkpoint import MANIFEST_NAME, REPORTS_NAME, ReportLog, read_manifest_state, read_reports

__all__ = ["LOCK_NAME", "check_run_folder", "lock_folder", "repair_report_log"]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike[str], *, field: str = "out") -> Iterator[Path]:
    """Hold ``folder`` exclusively (created if missing) for the ``with`` block; yield the folder.

    A folder this call created is removed again when the block fails before writing anything in it.

    Parameters
    ----------
    folder : path
        The run or experiment folder.
    field : str
        The option named in the error (``out`` for ``--out``).

    Raises
    ------
    InvalidInputError
        Another process (or another lock in this one) holds the folder: "X is in use by process PID".
    StorageError
        The folder or its lock file cannot be created (read-only file system, no space, no permission).
    """
    path = Path(folder)
    lock_path = path / LOCK_NAME
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise StorageError.from_os_error(exc, lock_path, "create") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            hint = f"{path} is in use by process {holder}; wait for it to end, or use another folder"
            raise InvalidInputError(
                [Issue(field, "a run folder no other process is using", _Said("one held by another process"), hint)]
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError.from_os_error(exc, lock_path, "lock") from None
            raise  # pragma: no cover - BlockingIOError covers both on Linux
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            raise StorageError.from_os_error(exc, lock_path, "write") from None
        _remove_torn_writes(path)
        try:
            yield path
        except BaseException:
            if created:
                _remove_if_only_the_lock(path)
            raise
    finally:
        os.close(fd)  # releases the flock


def _remove_torn_writes(path: Path) -> None:
    """Delete the temporary files of atomic writes a killed holder left (``.NAME.XXXX.tmp``, in the folder and
    its ``plans/``): they were never renamed into place, and no one else can be writing them now."""
    for stale in [*path.glob(".*.tmp"), *path.glob("plans/.*.tmp")]:
        try:
            stale.unlink()
            log.info("removed %s, a write a killed run left unfinished", stale)
        except OSError:
            pass


def _remove_if_only_the_lock(path: Path) -> None:
    """A run that failed before writing anything leaves no empty folder behind (it held the lock: nobody waits)."""
    try:
        if [p.name for p in path.iterdir()] == [LOCK_NAME]:
            (path / LOCK_NAME).unlink()
            path.rmdir()
    except OSError:
        pass


def _read_holder(fd: int) -> str:
    """The process id the holder wrote, or a phrase when it has not written it yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "(unknown: it is starting)"


class _Said(str):
    """Text shown as it is in an error's "got" (no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def _report_lines(folder: Path) -> int:
    try:
        data = (folder / REPORTS_NAME).read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StorageError.from_os_error(exc, folder / REPORTS_NAME, "read") from None
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def check_run_folder(folder: str | os.PathLike[str], *, resume: bool, field: str = "out") -> None:
    """Refuse a folder the run cannot use, before anything loads or is written.

    A new run (``resume=False``) needs a folder without a committed checkpoint and with an empty or
    absent ``reports.jsonl``. A resume with no ``checkpoint.json`` is a fresh start only when nothing
    was ever committed there (no report line, no tensor file); otherwise its checkpoint was lost.

    Raises
    ------
    InvalidInputError
        Naming ``field`` (``out``), the folder and what it holds.
    """
    path = Path(folder)
    has_manifest = (path / MANIFEST_NAME).exists()
    lines = _report_lines(path)
    if not resume:
        if has_manifest or lines:
            held = f"{MANIFEST_NAME}" if has_manifest else f"{lines} lines in {REPORTS_NAME}"
            hint = f"{path} holds {held}; pass --resume to continue it, or start the run in a new folder"
            raise InvalidInputError(
                [Issue(field, "an empty folder for a new run", _Said("a folder holding a run"), hint)]
            )
        return
    if has_manifest:
        return
    tensors = sorted(p.name for p in path.glob("checkpoint-*.safetensors")) if path.is_dir() else []
    if lines or tensors:
        parts = [f"{lines} report lines"] if lines else []
        parts += [f"{len(tensors)} tensor file(s)"] if tensors else []
        held = " and ".join(parts)
        hint = (
            f"{path}: {MANIFEST_NAME} is missing but {held} remain; the checkpoint was deleted or lost, so the "
            "run cannot continue exactly: start it in a new folder"
        )
        expected = f"a run folder with its {MANIFEST_NAME} (the last committed round) to resume from"
        raise InvalidInputError([Issue(field, expected, _Said(f"one without {MANIFEST_NAME}"), hint)])
    log.info("nothing was committed in %s yet: the run starts from round 1", path)


def repair_report_log(folder: str | os.PathLike[str]) -> list[RoundReport]:
    """The run's committed reports, rounds ``1..c`` for the checkpoint's ``c``, after repairing the log.

    A crash between a checkpoint's commit and its report's append leaves round ``c`` out of the log;
    a crash mid-append leaves a partial line. Both are repaired here (R2 of ``runtime.checkpoint``),
    so results built from the log count every committed round once. A folder without a checkpoint
    has no committed round: ``[]``.

    Raises
    ------
    InvalidInputError
        The manifest or the log is damaged beyond the repairs R2 allows.
    """
    path = Path(folder)
    if not (path / MANIFEST_NAME).exists():
        return []
    state = read_manifest_state(path)
    ReportLog.open(path / REPORTS_NAME, resume_state=state).close()
    return read_reports(path / REPORTS_NAME)
