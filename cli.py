"""The ``hierfedlora`` command line: profile | fleet | plan | whatif | run | demo | experiment | calibrate.

Every command reads and writes JSON, checks input at the boundary and exits with a code
that says what went wrong: 0 ok, 2 invalid input (a run folder in use by another process
included), 3 infeasible or no solution, 4 solver failure, 5 resume mismatch, 74 a file or
folder that cannot be read or written (read-only file system, full disk, no permission: the
path is named), 130 interrupted. Anything else is a bug: one line saying so, the version,
and the path of its saved traceback (a new file per failure). This module owns logging handlers and
progress bars and is the only place that calls ``sys.exit``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import tempfile
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from hierfedlora import __version__
from hierfedlora.planner.errors import (
    HierFedLoraError,
    InfeasibleError,
    InvalidInputError,
    NoSolutionError,
    ResumeMismatchError,
    RunInterruptedError,
    SolverFailedError,
    StorageError,
)

__all__ = ["build_parser", "main"]

log = logging.getLogger("hierfedlora")

EXIT_CODES: tuple[tuple[type[HierFedLoraError], int], ...] = (
    (InvalidInputError, 2),
    (InfeasibleError, 3),
    (NoSolutionError, 3),
    (SolverFailedError, 4),
    (ResumeMismatchError, 5),
    (StorageError, 74),
    (RunInterruptedError, 130),
)


COMMAND_MODULES = ("profile", "fleet", "plan", "whatif", "run", "demo", "experiment", "calibrate")
"""Modules under ``hierfedlora.commands``; each has ``register(commands)``, which adds its subparser."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="hierfedlora",
        description="Plan and run hierarchical federated LoRA fine-tuning on heterogeneous devices.",
    )
    parser.add_argument("--version", action="version", version=f"hierfedlora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"hierfedlora.commands.{name}").register(commands)
    return parser


def _exit_code(error: HierFedLoraError) -> int:
    for error_type, code in EXIT_CODES:
        if isinstance(error, error_type):
            return code
    return 1


EXIT_STORAGE = 74
"""A file system refused a read or write (sysexits' EX_IOERR)."""

STORAGE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO, errno.EFBIG})
"""The errors of the environment, not of the program: reported as :class:`StorageError`."""


def _report_bug(exc: BaseException) -> int:
    text = "".join(traceback.format_exception(exc))
    try:  # a new file per failure: concurrent failures never overwrite each other's traceback
        fd, name = tempfile.mkstemp(prefix=f"hierfedlora-traceback-{__version__}-", suffix=".txt")
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        path = Path(name)
    except OSError:
        path = Path("(could not save the traceback)")
    print(
        f"hierfedlora {__version__}: internal error ({type(exc).__name__}: {exc}); this is a bug. "
        f"Traceback saved to {path}",
        file=sys.stderr,
    )
    return 70


def _show_warning(message: Warning | str, category: type[Warning], *_args: object, **_kwargs: object) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    warnings.showwarning = _show_warning
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except HierFedLoraError as error:
        print(f"error: {error}", file=sys.stderr)
        return _exit_code(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            return _report_bug(exc)
        # a file system fault no reader or writer wrapped: still one line naming the path
        print(f"error: {StorageError.from_os_error(exc, '(unnamed file)', 'read or write')}", file=sys.stderr)
        return EXIT_STORAGE
    except Exception as exc:
        return _report_bug(exc)


if __name__ == "__main__":
    sys.exit(main())
