"""Field rules as data: the checks in ``__post_init__`` and the bad-input tests both read them.

A :class:`Rule` states the whole rule in words (``expected``), decides a value
(``accepts``) and lists values that must be refused (``bad_values``), so tests can
generate bad input from the rules themselves. NaN and infinity are refused explicitly:
``math.isfinite(x) and x > 0``, never ``x <= 0``, which lets NaN by.

Examples
--------
>>> FINITE_POSITIVE.accepts(2.5), FINITE_POSITIVE.accepts(float("nan"))
(True, False)
>>> [str(issue) for issue in check_fields({"rate": -1.0}, {"rate": FINITE_POSITIVE})]
['rate must be a finite number > 0; got -1.0']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from hierfedlora.planner.errors import Issue

__all__ = [
    "ANY_STRING",
    "FINITE_NON_NEGATIVE",
    "FINITE_POSITIVE",
    "FRACTION",
    "NON_EMPTY_STRING",
    "NON_NEGATIVE_INT",
    "OPTIONAL_FINITE_POSITIVE",
    "OPTIONAL_POSITIVE_INT",
    "POSITIVE_INT",
    "MAX_BYTES",
    "MAX_COUNT",
    "MAX_STEP_S",
    "MAX_TIME_S",
    "Rule",
    "all_ints_at_least",
    "check_fields",
    "check_limits",
    "finite_tuple",
    "int_tuple",
    "is_int",
    "is_number",
    "optional",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """A field's rule: the words, the test, and values the test must refuse."""

    expected: str
    accepts: Callable[[Any], bool]
    bad_values: tuple[Any, ...] = ()


def is_number(value: object) -> bool:
    """True for int or float, but not bool (``True`` is an int in Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    """True for int, not bool; integral floats are refused so JSON ``3.0`` is caught."""
    return isinstance(value, int) and not isinstance(value, bool)


def all_ints_at_least(values: tuple[object, ...], least: int) -> bool:
    """Whether every element is an int (not bool) ``>= least``; plain-int tuples are decided at C speed."""
    if set(map(type, values)) <= {int}:
        return not values or min(values) >= least  # type: ignore[type-var]
    return all(is_int(x) and x >= least for x in values)  # type: ignore[operator]


def _finite_positive(value: object) -> bool:
    return is_number(value) and math.isfinite(value) and value > 0  # type: ignore[arg-type,operator]


def _finite_non_negative(value: object) -> bool:
    return is_number(value) and math.isfinite(value) and value >= 0  # type: ignore[arg-type,operator]


FINITE_POSITIVE = Rule("a finite number > 0", _finite_positive, (0.0, -2.0, math.nan, math.inf, "fast"))
FINITE_NON_NEGATIVE = Rule("a finite number >= 0", _finite_non_negative, (-1.0, math.nan, math.inf, "zero"))
FRACTION = Rule(
    "a number in [0, 1]",
    lambda v: is_number(v) and math.isfinite(v) and 0 <= v <= 1,
    (-0.1, 1.5, math.nan, "half"),
)
POSITIVE_INT = Rule("an integer >= 1", lambda v: is_int(v) and v >= 1, (0, -3, 2.5, math.nan, "8"))
NON_NEGATIVE_INT = Rule("an integer >= 0", lambda v: is_int(v) and v >= 0, (-1, 1.5, "0"))
NON_EMPTY_STRING = Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "", ("", "  ", 7, None))
ANY_STRING = Rule("a string", lambda v: isinstance(v, str), (7, None))


def optional(rule: Rule) -> Rule:
    """The same rule, with ``None`` (absent) also accepted."""
    bad = tuple(v for v in rule.bad_values if v is not None)
    return Rule(f"{rule.expected}, or null", lambda v: v is None or rule.accepts(v), bad)


OPTIONAL_FINITE_POSITIVE = optional(FINITE_POSITIVE)
OPTIONAL_POSITIVE_INT = optional(POSITIVE_INT)


def int_tuple(minimum: int, *, non_empty: bool = True) -> Rule:
    """A tuple of integers, each ``>= minimum``."""
    words = f"a {'non-empty ' if non_empty else ''}list of integers >= {minimum}"

    def accepts(value: object) -> bool:
        return (
            isinstance(value, tuple)
            and (len(value) > 0 or not non_empty)
            and all(is_int(v) and v >= minimum for v in value)
        )

    return Rule(words, accepts, ((), (minimum - 1,), (1.5,), ("a",), 3) if non_empty else ((minimum - 1,),))


def finite_tuple(*, positive: bool) -> Rule:
    """A non-empty tuple of finite numbers, each ``> 0`` (positive) or ``>= 0``."""
    element = _finite_positive if positive else _finite_non_negative
    sign = "> 0" if positive else ">= 0"
    return Rule(
        f"a non-empty list of finite numbers {sign}",
        lambda v: isinstance(v, tuple) and len(v) > 0 and all(element(x) for x in v),
        ((), (math.nan,), (-1.0,), (math.inf,), "1.0"),
    )


def check_limits(
    obj: object, limits: Mapping[str, float], rules: Mapping[str, Rule], *, broken: frozenset[str] | None = None
) -> list[Issue]:
    """Issues for fields that pass their rule but exceed their upper bound (for a tuple: any element).

    A bound is where a value can only be a mistake, and keeps the arithmetic downstream (int64
    arrays, float sums, a solver's coefficients) from overflowing. Fields that break their rule
    are left to :func:`check_fields`, so each problem is reported once: ``broken`` names them when
    the caller has just run :func:`check_fields` (so the rules need not run twice), else each
    field's rule decides.

    >>> [str(i) for i in check_limits({"rate": 1e308}, {"rate": 1e4}, {"rate": FINITE_POSITIVE})]
    ['rate must be a finite number > 0, at most 10000; got 1e+308']
    """
    issues = []
    mapping = isinstance(obj, Mapping)  # once: an ABC check costs more than the rules it guards
    for name, maximum in limits.items():
        value = obj.get(name) if mapping else getattr(obj, name)  # type: ignore[attr-defined]
        if (name in broken) if broken is not None else not rules[name].accepts(value):
            continue
        values = value if isinstance(value, tuple) else (value,)
        if _plain_numbers(values):  # the common case, at C speed: a million devices are checked on load
            exceeds = bool(values) and max(values) > maximum
        else:
            exceeds = any(is_number(v) and v > maximum for v in values)
        if exceeds:
            issues.append(Issue(name, f"{rules[name].expected}, at most {maximum:g}", value))
    return issues


def _plain_numbers(values: tuple[object, ...]) -> bool:
    """Whether every value is exactly an ``int`` or a ``float`` (no bool, no subclass), so ``max`` decides
    the bound (values reaching it passed their rule, and every rule with a bound refuses NaN)."""
    return set(map(type, values)) <= {int, float}


MAX_STEP_S = 1e4
"""Most seconds a measured step quantity (one layer's forward of a batch, ...) may take."""
MAX_TIME_S = 1e12
"""Most seconds any predicted or simulated time may be."""
MAX_BYTES = 2**50
"""Most bytes of any size (a pebibyte)."""
MAX_COUNT = 10**12
"""Largest count (samples of a class on a device, ...)."""


def check_fields(obj: object | Mapping[str, object], rules: Mapping[str, Rule]) -> list[Issue]:
    """Check every field named in ``rules``; return one :class:`Issue` per broken rule.

    ``obj`` is a dataclass instance or a mapping of field name to value.
    """
    issues = []
    mapping = isinstance(obj, Mapping)
    for name, rule in rules.items():
        value = obj[name] if mapping else getattr(obj, name)  # type: ignore[index]
        if not rule.accepts(value):
            issues.append(Issue(name, rule.expected, value))
    return issues
