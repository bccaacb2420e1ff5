"""Checkpoints and the round report log: nothing lost, nothing reported twice.

A run folder holds::

    checkpoint.json                                 manifest: RunState, tensor file name and sha256
    checkpoint-{round:06d}-{sha256[:12]}.safetensors the round's tensors (never pickle)
    reports.jsonl                                   one RoundReport per line

Tensor names are the caller's: by convention ``global.<adapter key>``, ``optimizer.<device position>.<name>``
and :data:`TORCH_RNG_KEY` for ``torch.Generator.get_state()`` (uint8). The numpy generator state is JSON in
:attr:`RunState.numpy_rng_state` (:func:`numpy_rng_state`, :func:`restore_numpy_rng`).

Commit protocol of global round ``k`` (the engine follows it; every write is temp file in the same
folder, flush, fsync, ``os.replace``, fsync of the folder):

    (P1) ``save_checkpoint``: the tensor file, under a new name, then the manifest naming it. Replacing
         the manifest is the commit point; a crash before it leaves round ``k-1``'s checkpoint whole,
         because its tensor file is deleted only after (P1) has replaced the manifest.
    (P2) ``ReportLog.append(report k)``: one line, flushed and fsynced.
    (P3) only then is report ``k`` yielded.

Invariants, with ``c`` the round in ``checkpoint.json`` (0 when absent):

    (R1) At any instant, even right after a SIGKILL, the complete lines of ``reports.jsonl`` are rounds
         ``1..m`` once each, in order, with ``m = c`` or ``m = c - 1``; at most one partial line follows.
    (R2) After ``ReportLog.open(path, resume_state=state)`` the log holds exactly rounds ``1..c`` once
         each: a partial line and lines past ``c`` are cut, and when ``m = c - 1`` report ``c`` is
         appended again from ``state.last_report``, which every checkpoint carries for this reason.
         Report ``c`` may therefore be yielded twice across a crash (once before it, once on resume)
         but is written to the log once.

The numpy generator's state helpers (``numpy_rng_state``, ``restore_numpy_rng``) and :class:`RunState` live in
:mod:`hierfedlora.runtime.run_state` (examples there) and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from hierfedlora.planner.errors import InvalidInputError, Issue, ResumeMismatchError, StorageError
from hierfedlora.planner.io import atomic_write_bytes, from_dict, from_json, parse_json, sha256_of, to_json
from hierfedlora.planner.outcomes import RoundReport
from hierfedlora.planner.types import SCHEMA_VERSION
from hierfedlora.runtime.run_state import RUN_STATE_RULES, RunState, numpy_rng_state, restore_numpy_rng

if TYPE_CHECKING:  # torch is imported where tensors are saved or loaded: a refused command never loads it
    import torch

__all__ = [
    "CRASH_AFTER_COMMIT_ENV",
    "MANIFEST_NAME",
    "REPORTS_NAME",
    "RUN_STATE_RULES",
    "TORCH_RNG_KEY",
    "ReportLog",
    "RunState",
    "load_checkpoint",
    "read_checkpoint_plan_id",
    "read_manifest_state",
    "numpy_rng_state",
    "read_reports",
    "restore_numpy_rng",
    "save_checkpoint",
]

MANIFEST_NAME = "checkpoint.json"
REPORTS_NAME = "reports.jsonl"
TORCH_RNG_KEY = "rng.torch"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Manifest:
    state: RunState
    tensor_file: str
    tensor_sha256: str
    state_sha256: str = ""  # of the state's canonical JSON; empty in folders written before it was recorded
    schema_version: int = SCHEMA_VERSION


def _invalid(path: str, expected: str, got: object, source: str | None = None, hint: str = "") -> InvalidInputError:
    return InvalidInputError([Issue(path, expected, got, hint)], source)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike[str], state: RunState, tensors: dict[str, torch.Tensor]) -> Path:
    """Commit ``state`` and ``tensors`` as the run's only checkpoint (P1); return the manifest's path.

    Raises
    ------
    InvalidInputError
        If ``state`` is not a RunState or a tensor name or value is not a non-empty string and a tensor.
    """
    import safetensors.torch
    import torch

    issues = [] if isinstance(state, RunState) else [Issue("state", "a RunState", type(state).__name__)]
    for name, value in tensors.items():
        if not (isinstance(name, str) and name) or not isinstance(value, torch.Tensor):
            issues.append(Issue(f"tensors[{name!r}]", "a tensor under a non-empty string name", type(value).__name__))
    if issues:
        raise InvalidInputError(issues)
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses views and tensors sharing memory; adapters are small
    payload = safetensors.torch.save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    digest = hashlib.sha256(payload).hexdigest()
    # the digest in the name: re-saving a round never overwrites the file the current manifest names
    tensor_file = f"checkpoint-{state.global_round:06d}-{digest[:12]}.safetensors"
    atomic_write_bytes(folder / tensor_file, payload)
    manifest = _Manifest(state=state, tensor_file=tensor_file, tensor_sha256=digest, state_sha256=sha256_of(state))
    atomic_write_bytes(folder / MANIFEST_NAME, (to_json(manifest) + "\n").encode())  # the commit point
    _crash_if_asked(state.global_round)
    for stale in [*folder.glob("checkpoint-*.safetensors"), *folder.glob(".checkpoint*.tmp")]:
        if stale.name != tensor_file:
            stale.unlink(missing_ok=True)
    return folder / MANIFEST_NAME


CRASH_AFTER_COMMIT_ENV = "HIERFEDLORA_CRASH_AFTER_COMMIT"
"""Fault injection for tests: with this variable set to ``k``, the process kills itself (SIGKILL) right
after committing round ``k``'s checkpoint, before its report is appended: the crash window of (R2)."""


def _crash_if_asked(global_round: int) -> None:
    if os.environ.get(CRASH_AFTER_COMMIT_ENV, "").strip() == str(global_round):
        os.kill(os.getpid(), signal.SIGKILL)


def _read_manifest(path: Path) -> _Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = "no committed checkpoint: the run never finished a round there"
        raise _invalid("run_dir", f"a folder holding {MANIFEST_NAME}", str(path.parent), hint=hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid("(file)", "a readable UTF-8 file", str(exc), str(path)) from None
    data = parse_json(text, source=str(path))
    for found in (data, data.get("state") if isinstance(data, dict) else None):
        if isinstance(found, dict) and "schema_version" in found and found["schema_version"] != SCHEMA_VERSION:
            raise ResumeMismatchError("schema_version", SCHEMA_VERSION, found["schema_version"])
    manifest = from_dict(_Manifest, data, source=str(path))
    if manifest.state_sha256 and sha256_of(manifest.state) != manifest.state_sha256:
        expected = f"the sha256 of the state as written ({sha256_of(manifest.state)[:12]}...)"
        hint = "the file is corrupt: a value of its state changed after the checkpoint was written"
        raise _invalid("state_sha256", expected, manifest.state_sha256[:12] + "...", str(path), hint)
    return manifest


def read_manifest_state(run_dir: str | os.PathLike[str]) -> RunState:
    """The :class:`RunState` of ``run_dir``'s last committed round, from its manifest (tensors unread).

    Raises
    ------
    InvalidInputError
        The manifest is missing, not JSON, or breaks a field rule.
    ResumeMismatchError
        It was written with another schema version.
    """
    return _read_manifest(Path(run_dir) / MANIFEST_NAME).state


def read_checkpoint_plan_id(run_dir: str | os.PathLike[str]) -> str:
    """The plan id of ``run_dir``'s last committed round (a re-planned run changes plans)."""
    return _read_manifest(Path(run_dir) / MANIFEST_NAME).state.plan_id


def load_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    expected_plan_id: str,
    expected_fleet_sha256: str,
    expected_model_sha256: str,
    expected_aggregation: str = "fedavg",
) -> tuple[RunState, dict[str, torch.Tensor]]:
    """Read the run's committed checkpoint and prove it belongs to this run.

    Raises
    ------
    ResumeMismatchError
        If its ``schema_version``, ``plan_id``, ``fleet_sha256``, ``model_sha256`` or ``aggregation`` differs
        (``field``, ``expected``, ``found``), checked in that order.
    InvalidInputError
        If the manifest is missing, not JSON, or breaks a field rule, or the tensor file it names is
        missing, does not match its sha256, or is not safetensors.
    """
    manifest_path = Path(run_dir) / MANIFEST_NAME
    manifest = _read_manifest(manifest_path)
    state = manifest.state
    identity = (
        ("plan_id", expected_plan_id),
        ("fleet_sha256", expected_fleet_sha256),
        ("model_sha256", expected_model_sha256),
        ("aggregation", expected_aggregation),
    )
    for field, value in identity:
        if getattr(state, field) != value:
            raise ResumeMismatchError(field, value, getattr(state, field))
    source, name = str(manifest_path), manifest.tensor_file
    if Path(name).name != name:
        raise _invalid("tensor_file", "a file name next to the manifest", name, source)
    try:
        payload = (manifest_path.parent / name).read_bytes()
    except OSError as exc:
        raise _invalid("tensor_file", "an existing, readable file", f"{name}: {exc.strerror}", source) from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != manifest.tensor_sha256:
        expected = f"the sha256 of {name} ({digest})"
        raise _invalid("tensor_sha256", expected, manifest.tensor_sha256, source, "the file is corrupt")
    import safetensors.torch

    try:
        tensors = safetensors.torch.load(payload)
    except Exception as exc:  # SafetensorError is not importable by a stable path
        raise _invalid("tensor_file", "a safetensors file", f"{name}: {exc}", source) from None
    return state, tensors


def _parse_report(line: bytes, where: str) -> RoundReport:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid("(line)", "UTF-8 text", str(exc), where) from None
    return from_json(RoundReport, text, source=where)


def read_reports(path: str | os.PathLike[str]) -> list[RoundReport]:
    """Every complete line of a report log; a trailing partial line (never committed) is skipped.

    Raises
    ------
    InvalidInputError
        If the file is missing or a complete line is not a valid RoundReport (its line number named).
    """
    file = Path(path)
    try:
        lines = file.read_bytes().split(b"\n")[:-1]
    except OSError as exc:
        raise _invalid("path", "an existing, readable report log", f"{file}: {exc.strerror}") from None
    return [_parse_report(line, f"{file.name} line {idx}") for idx, line in enumerate(lines, start=1)]


class ReportLog:
    """The append-only ``reports.jsonl``: a line per round, flushed and fsynced before ``append`` returns.

    Open it with :meth:`open`; use it as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path, last_round: int, written: bytes = b"") -> None:
        self.path = path
        self._last_round = last_round
        self._digest = hashlib.sha256(written)  # of the lines in the log, for RunState.reports_sha256
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StorageError.from_os_error(exc, path, "open") from None

    @property
    def last_round(self) -> int:
        """The last round in the log."""
        return self._last_round

    @property
    def sha256(self) -> str:
        """The sha256 of the log's lines (rounds ``1..last_round``), as :attr:`RunState.reports_sha256` records."""
        return self._digest.hexdigest()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, resume_state: RunState | None = None) -> ReportLog:
        """Open the log of a new run (``resume_state=None``) or repair it for resuming (R2).

        Raises
        ------
        InvalidInputError
            A new run whose log is not empty; or, on resume, a complete line before the end that is not
            a RoundReport, rounds out of order or repeated, fewer than ``c - 1`` rounds, or round ``c``
            differing from the checkpoint's report, or rounds ``1..c - 1`` changed since round ``c`` was
            committed (their sha256 differs from ``reports_sha256``, when the checkpoint records one).
        """
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        data = file.read_bytes() if file.exists() else b""
        if resume_state is None:
            if data:
                hint = "resume the run, or start it in a new folder"
                raise _invalid(file.name, "absent or empty for a new run", f"{len(data)} bytes", hint=hint)
            return cls(file, 0)
        keep, last_report = _committed_prefix(file.name, data, resume_state)
        if keep < len(data):
            with open(file, "r+b") as handle:
                handle.truncate(keep)
                os.fsync(handle.fileno())
        log = cls(file, last_report.global_round if last_report else 0, data[:keep])
        if log.last_round == resume_state.global_round - 1:
            assert resume_state.last_report is not None  # RunState's rule for global_round > 0
            log.append(resume_state.last_report)
        return log

    def append(self, report: RoundReport) -> None:
        """(P2) Write ``report`` as one line, flush and fsync; it must be round ``last_round + 1``.

        Raises
        ------
        StorageError
            The disk is full or refuses the write; names the log (a partial line may remain: resume cuts it).
        """
        if self._fd is None:
            raise _invalid("report log", "open", "closed")
        if not isinstance(report, RoundReport) or report.global_round != self._last_round + 1:
            got = report.global_round if isinstance(report, RoundReport) else type(report).__name__
            raise _invalid("report.global_round", f"{self._last_round + 1} (the next round)", got)
        line = (to_json(report, indent=None) + "\n").encode()
        written = 0
        try:
            while written < len(line):
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)
        except OSError as exc:  # a full disk mid-line leaves a partial line, which resume cuts (R1, R2)
            raise StorageError.from_os_error(exc, self.path, "append to") from None
        self._digest.update(line)
        self._last_round += 1

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ReportLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_reports_digest(name: str, prefix: bytes, state: RunState) -> None:
    """Rounds ``1..c - 1`` of the log must be the bytes they were when round ``c`` was committed."""
    if state.reports_sha256 and hashlib.sha256(prefix).hexdigest() != state.reports_sha256:
        expected = f"rounds 1..{state.global_round - 1} as they were when round {state.global_round} was committed"
        hint = "the file is corrupt: their sha256 differs from the checkpoint's reports_sha256"
        raise _invalid(name, expected, "changed lines", hint=hint)


def _committed_prefix(name: str, data: bytes, state: RunState) -> tuple[int, RoundReport | None]:
    """Bytes to keep (rounds ``1..min(m, c)``) and the last kept report, checking (R1)."""
    committed = state.global_round
    *complete, partial = data.split(b"\n")
    keep, last = 0, None
    for idx, line in enumerate(complete, start=1):
        where = f"{name} line {idx}"
        try:
            report = _parse_report(line, where)
        except InvalidInputError:
            if idx == len(complete) and not partial:
                break  # a damaged last line: dropped, and the (R1) check below proves nothing committed is lost
            raise
        if report.global_round > committed:
            break  # written past the checkpoint (an older checkpoint restored): not committed
        if report.global_round != idx:
            raise _invalid(where, f"round {idx} (rounds 1, 2, ... once each)", report.global_round)
        keep, last = keep + len(line) + 1, report
        if report.global_round == committed - 1:
            _check_reports_digest(name, data[:keep], state)
    found = last.global_round if last else 0
    if found < committed - 1:
        expected = f"rounds 1..{committed - 1} at least (the checkpoint is at round {committed})"
        raise _invalid(name, expected, f"rounds 1..{found}")
    if found == committed and committed > 0 and last != state.last_report:
        raise _invalid(f"{name} line {found}", "the checkpoint's report of that round", "a different report")
    return keep, last
