"""Reading text files and writing files atomically: a temporary file in the same folder, ``fsync`` and
``os.replace``, so a reader never sees a half-written file; failures are :class:`InvalidInputError` (the user's
file) or :class:`StorageError` (the storage), naming the path.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError, Issue, StorageError

__all__ = ["atomic_write_bytes", "atomic_write_text", "current_umask", "read_text"]


def read_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file's contents (a byte order mark kept; :func:`parse_json` skips it).

    Raises
    ------
    InvalidInputError
        A missing file, a folder, or bytes that are not UTF-8, naming the file.
    StorageError
        Any other failure to read it (no permission, an I/O error), naming the path.
    """
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError([Issue("path", "an existing file", str(file))], file.name) from None
    except IsADirectoryError:
        raise InvalidInputError([Issue("path", "a file, not a folder", str(file))], file.name) from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError([Issue("path", "a readable UTF-8 file", f"{file}: {exc}")], file.name) from None
    except OSError as exc:
        raise StorageError.from_os_error(exc, file, "read") from None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file in the same folder, fsync, replace."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, flush, fsync, ``os.replace``,
    fsync of the folder. A crash at any point leaves the old file or the new one, never a mix. The file
    gets the permissions a plain ``open`` would give it (``0o666`` less the umask).

    Raises
    ------
    StorageError
        The folder or file cannot be written (read-only file system, no space, no permission), naming
        ``path``; no temporary file is left behind.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # names the folder that could not be made
        raise StorageError.from_os_error(exc, target.parent, "write") from None
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # the file the user asked for, not our temporary name
        raise StorageError(str(target), "write", exc.strerror or str(exc), exc.errno) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException as exc:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(str(target), "write", exc.strerror or str(exc), exc.errno) from None
        raise
    _fsync_dir(target.parent)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
