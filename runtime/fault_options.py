"""What faults a run's fleet has (``FaultOptions``, (F1)-(F5) of ``runtime.faults``), checked field by field.

Kept apart from ``runtime.faults`` (which imports torch) so that the experiment presets, and with them the
command line's ``--help``, load without torch.
"""

from __future__ import annotations

import dataclasses
import math

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.rules import FINITE_POSITIVE, Rule, check_fields, check_limits, is_number
from hierfedlora.planner.types import SCHEMA_RULE, SCHEMA_VERSION

__all__ = ["FAULT_LIMITS", "FAULT_RULES", "POISON_KINDS", "FaultOptions"]

POISON_KINDS = ("nan", "inf", "scale")


def _probability(value: object) -> bool:
    return is_number(value) and math.isfinite(value) and 0 <= value < 1  # type: ignore[operator,arg-type]


PROBABILITY = Rule("a number in [0, 1)", _probability, (-0.1, 1.0, math.nan, "half"))
FAULT_RULES: dict[str, Rule] = {
    "dropout": PROBABILITY,
    "straggler_frac": PROBABILITY,
    "straggler_factor": Rule(
        "a finite number >= 1", lambda v: is_number(v) and math.isfinite(v) and v >= 1, (0.5, math.nan, math.inf)
    ),
    "deadline_quantile": Rule(
        "a number in (0, 1], or null (no deadline)",
        lambda v: v is None or (is_number(v) and math.isfinite(v) and 0 < v <= 1),
        (0.0, 1.5, math.nan, "q"),
    ),
    "poison_frac": PROBABILITY,
    "poison_kinds": Rule(
        f"a non-empty list of {', '.join(POISON_KINDS)}",
        lambda v: isinstance(v, tuple) and len(v) > 0 and all(k in POISON_KINDS for k in v),
        ((), ("zero",), "nan"),
    ),
    "poison_scale": FINITE_POSITIVE,
    "norm_bound_ratio": Rule(
        "a finite number > 1", lambda v: is_number(v) and math.isfinite(v) and v > 1, (1.0, 0.5, math.nan, math.inf)
    ),
    "schema_version": SCHEMA_RULE,
}


FAULT_LIMITS = {"straggler_factor": 1e6, "poison_scale": 1e6}
"""Upper bounds of :data:`FAULT_RULES` fields: a straggler slowed 1e20 times or a poison scaled 1e20 times (taken
as given) only overflows the clock or the updates."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FaultOptions:
    """Which faults the fleet has (F1)-(F4); screening (F5) is on whenever faults are given.

    Parameters
    ----------
    dropout : float
        Probability that a device is offline for a global round (F1).
    straggler_frac, straggler_factor : float
        Probability that an online device is slowed for a round, and by how much (F2).
    deadline_quantile : float or None
        Per-group, per-intra-round deadline at this quantile of the devices' times (F3); ``None``:
        the group waits for its slowest device.
    poison_frac : float
        Probability that an online device sends a poisoned update for a round (F4).
    poison_kinds : tuple of {"nan", "inf", "scale"}
    poison_scale : float
        Factor on a ``"scale"`` poisoned update.
    norm_bound_ratio : float
        Screening bound: an update longer than this many times its group's median is rejected (F5).
    """

    dropout: float = 0.0
    straggler_frac: float = 0.0
    straggler_factor: float = 4.0
    deadline_quantile: float | None = None
    poison_frac: float = 0.0
    poison_kinds: tuple[str, ...] = POISON_KINDS
    poison_scale: float = 1000.0
    norm_bound_ratio: float = 10.0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, FAULT_RULES)
        issues += check_limits(self, FAULT_LIMITS, FAULT_RULES, broken=frozenset(i.path for i in issues))
        if issues:
            raise InvalidInputError(issues)
