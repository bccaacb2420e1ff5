"""JSON round-trips for every contract type, and atomic file writes.

``to_dict`` turns a contract dataclass into plain JSON data (tuples become lists, enums
their names); ``from_dict`` parses it back, collecting *every* problem (missing keys,
unknown keys with a "did you mean" hint, wrong shapes, broken field rules) into one
:class:`InvalidInputError` whose paths point into the data. ``write_json`` writes through
a temporary file in the same folder, ``fsync`` and ``os.replace``, so a reader never sees
a half-written file.

Strict JSON parsing lives in :mod:`hierfedlora.planner.strict_json`, reading and atomic writing of files in
:mod:`hierfedlora.planner.file_io`; their functions are importable from here.

Examples
--------
>>> from hierfedlora.planner.types import SolverOptions
>>> from_dict(SolverOptions, to_dict(SolverOptions(seed=3))) == SolverOptions(seed=3)
True
>>> try:
...     from_dict(SolverOptions, {"time_limt_s": 5})
... except InvalidInputError as err:
...     print(err.issues[0].path, "|", err.issues[0].hint)
time_limt_s | did you mean 'time_limit_s'?
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.file_io import atomic_write_bytes, atomic_write_text, current_umask, read_text
from hierfedlora.planner.strict_json import MAX_JSON_DEPTH, MAX_NUMBER_DIGITS, parse_json

__all__ = [
    "SEAL_KEY",
    "atomic_write_bytes",
    "atomic_write_text",
    "canonical_json",
    "current_umask",
    "from_dict",
    "from_json",
    "parse_json",
    "read_json",
    "read_text",
    "sha256_of",
    "to_dict",
    "with_settings",
    "to_json",
    "write_json",
    # defined in planner.strict_json; importable from here as before
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_DIGITS",
]

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """Plain JSON data for a contract object (recursively)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"cannot write non-finite number {obj!r} to JSON")  # internal: rules forbid it
    return obj


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """JSON text for a contract object (strict JSON: no NaN)."""
    return json.dumps(to_dict(obj), indent=indent, allow_nan=False)


def canonical_json(obj: Any) -> str:
    """Compact, key-sorted JSON, for hashing."""
    return json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_of(obj: Any) -> str:
    """SHA-256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


class _Collector:
    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def add(self, path: str, expected: str, got: object, hint: str = "") -> None:
        self.issues.append(Issue(path, expected, got, hint))


_MISSING = object()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parse(tp: Any, value: Any, path: str, out: _Collector) -> Any:
    """Convert JSON data to ``tp``; record structural problems; return _MISSING on failure."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(inner[0], value, path, out) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, path, out)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        names = [m.value for m in tp]
        if value in names:
            return tp(value)
        out.add(path, f"one of {', '.join(map(repr, names))}", value)
        return _MISSING
    if origin is tuple:
        if not isinstance(value, list):
            if args and dataclasses.is_dataclass(args[0]):
                out.add(path, f"a list of {args[0].__name__} objects", value)
                return _MISSING
            return value  # a list of scalars: the field's rule knows the whole rule and says it
        element_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(element_types) != len(value):
            out.add(path, f"a list of {len(element_types)} items", value)
            return _MISSING
        parsed = [_parse(t, v, f"{path}[{i}]", out) for i, (t, v) in enumerate(zip(element_types, value, strict=True))]
        return _MISSING if any(p is _MISSING for p in parsed) else tuple(parsed)
    if origin is dict:
        if not isinstance(value, dict):
            out.add(path, "an object", value)
            return _MISSING
        return {k: _parse(args[1], v, f"{path}.{k}", out) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # JSON writes 2.0 as 2 in some tools
    return value


def _parse_dataclass(cls: Any, value: Any, path: str, out: _Collector) -> Any:
    if not isinstance(value, dict):
        out.add(path or "(top level)", f"an object ({cls.__name__})", value)
        return _MISSING
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    start = len(out.issues)
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            out.add(
                _join(path, key),
                f"a known field of {cls.__name__}",
                key,
                f"did you mean {close[0]!r}?" if close else "",
            )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in value:
            has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            if not has_default:
                out.add(_join(path, name), "present (a required field)", "missing")
            continue
        parsed = _parse(hints[name], value[name], _join(path, name), out)
        if parsed is not _MISSING:
            kwargs[name] = parsed
    if len(out.issues) > start:
        return _MISSING
    try:
        return cls(**kwargs)
    except InvalidInputError as err:
        out.issues.extend(issue.with_prefix(path) for issue in err.issues)
        return _MISSING


def from_dict(cls: type[T], data: Any, *, source: str | None = None) -> T:
    """Parse JSON data into ``cls``, reporting every problem at once.

    Raises
    ------
    InvalidInputError
        Listing each missing, unknown or broken field with its path.
    """
    out = _Collector()
    result = _parse_dataclass(cls, data, "", out)
    if out.issues or result is _MISSING:
        raise InvalidInputError(out.issues or [Issue("(top level)", f"an object ({cls.__name__})", data)], source)
    return typing.cast(T, result)


SEAL_KEY = "content_sha256"
"""A top-level key some files carry (``planner.sealed``): the sha256 of the rest of their content, checked on read."""


def from_json(cls: type[T], text: str, *, source: str | None = None) -> T:
    """Parse JSON text into ``cls``; malformed JSON is an :class:`InvalidInputError` too (:func:`parse_json`), and
    so is a file sealed with a :data:`SEAL_KEY` that is not the sha256 of its content (a value changed since)."""
    data = parse_json(text, source=source)
    recorded = data.pop(SEAL_KEY, None) if isinstance(data, dict) else None
    obj = from_dict(cls, data, source=source)
    if recorded is not None and recorded != sha256_of(obj):
        expected = f"the sha256 of the file's content as written ({sha256_of(obj)[:12]}...)"
        hint = "the file is corrupt: a value changed after it was written; delete it to have it recomputed"
        raise InvalidInputError([Issue(SEAL_KEY, expected, str(recorded)[:16], hint)], source)
    return obj


def read_json(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Read and parse a JSON file into ``cls``; errors name the file.

    Raises
    ------
    InvalidInputError
        A missing file, a folder, text that is not UTF-8 or not JSON, or a broken field.
    StorageError
        The file exists but cannot be read (no permission, an I/O error).
    """
    return from_json(cls, read_text(path), source=Path(path).name)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write a contract object as indented JSON, atomically."""
    atomic_write_text(path, to_json(obj) + "\n")


def with_settings(data: Mapping[str, Any], settings: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """JSON data of a contract object (e.g. a ``PlanningProblem``'s) with ``(field, value)`` settings put in.

    A dotted field reaches one object in (``solver.seed``, ``convergence.target_loss_gap``); tuples
    become lists, as JSON has them; later settings win. ``data`` is not changed. This is how the CLI's
    ``--set`` and flags and a what-if study's axes fill a problem, which ``from_dict`` then checks.

    >>> with_settings({"local_steps": 1, "solver": {"seed": 0}}, [("solver.seed", 3), ("depth_choices", (1, 2))])
    {'local_steps': 1, 'solver': {'seed': 3}, 'depth_choices': [1, 2]}
    """
    result = {key: dict(value) if isinstance(value, Mapping) else value for key, value in data.items()}
    for field, value in settings:
        value = list(value) if isinstance(value, tuple) else value
        head, _, rest = field.partition(".")
        if rest:
            inner = result.get(head)
            result[head] = {**(inner if isinstance(inner, Mapping) else {}), rest: value}
        else:
            result[field] = value
    return result
