"""Strict JSON parsing: :func:`parse_json` refuses NaN, Infinity, numbers past :data:`MAX_NUMBER_DIGITS` and
nesting past :data:`MAX_JSON_DEPTH`, naming where, so nothing downstream meets a non-finite number or recurses
without bound.

Examples
--------
>>> parse_json('{"a": [1, 2.5]}')
{'a': [1, 2.5]}
>>> try:
...     parse_json('{"rate": NaN}', source="x.json")
... except InvalidInputError as err:
...     print(err.issues[0])
rate must be a finite number (strict JSON has no NaN or Infinity); got 'NaN'
"""

from __future__ import annotations

import json
import math
from typing import Any

from hierfedlora.planner.errors import InvalidInputError, Issue

__all__ = ["MAX_JSON_DEPTH", "MAX_NUMBER_DIGITS", "parse_json"]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a JSON input may have (ours need fewer than 8)."""

MAX_NUMBER_DIGITS = 64
"""Longest number literal a JSON input may hold (a count needs at most 19 digits)."""


class _BadJsonError(ValueError):
    def __init__(self, expected: str, got: str) -> None:
        super().__init__(expected)
        self.expected, self.got = expected, got


def _parse_float(text: str) -> float:
    value = float(text)
    if len(text) > MAX_NUMBER_DIGITS or not math.isfinite(value):
        raise _BadJsonError(f"a finite number of at most {MAX_NUMBER_DIGITS} characters", text[:40])
    return value


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _BadJsonError(f"a number of at most {MAX_NUMBER_DIGITS} digits", f"{text[:10]}... ({len(text)} digits)")
    return int(text)


def _refuse_constant(name: str) -> Any:
    raise _BadJsonError("a finite number (strict JSON has no NaN or Infinity)", name)


def _too_deep(data: Any) -> bool:
    """Whether arrays and objects nest deeper than :data:`MAX_JSON_DEPTH` (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _bad_number_path(text: str) -> str:
    """Where the first refused number sits (``devices[3].uplink_mbps``), found by a lenient re-parse; '' if unknown."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path or "(top level)"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**MAX_NUMBER_DIGITS:
            return path or "(top level)"
        if isinstance(value, dict):
            stack.extend((v, _join(path, str(k))) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    return ""


def parse_json(text: str, *, source: str | None = None, where: str = "") -> Any:
    """Strict JSON data from ``text``: a UTF-8 byte order mark is skipped; NaN, Infinity, numbers that
    overflow a float or run past :data:`MAX_NUMBER_DIGITS`, and nesting past :data:`MAX_JSON_DEPTH` are
    refused, so nothing downstream meets a non-finite number or recurses without bound.

    Parameters
    ----------
    text : str
    source : str, optional
        The file, named in the error.
    where : str, optional
        The issue path to use (``line 4`` of a JSON Lines file); default: the line of the error.

    Raises
    ------
    InvalidInputError
        Malformed or refused JSON, one issue naming the line.
    """
    try:
        data = json.loads(
            text.removeprefix("\ufeff"),
            parse_float=_parse_float,
            parse_int=_parse_int,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as exc:
        raise InvalidInputError([Issue(where or f"line {exc.lineno}", "valid JSON", exc.msg)], source) from None
    except _BadJsonError as exc:
        path = where or _bad_number_path(text.removeprefix("\ufeff")) or "(number)"
        raise InvalidInputError([Issue(path, exc.expected, exc.got)], source) from None
    except RecursionError:
        data = None
        deep = True
    except ValueError as exc:  # int() past the interpreter's digit limit and the like
        raise InvalidInputError([Issue(where or "(number)", "valid JSON numbers", str(exc))], source) from None
    else:
        deep = _too_deep(data)
    if deep:
        expected = f"JSON nested at most {MAX_JSON_DEPTH} levels deep"
        raise InvalidInputError([Issue(where or "(top level)", expected, "deeper nesting")], source)
    return data
