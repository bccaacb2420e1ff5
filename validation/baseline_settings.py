"""The methods the experiment compares and the knobs they share, without the planning they need.

Kept apart from ``validation.baselines`` (which imports the solvers) so that the experiment presets,
and with them the command line's ``--help``, load without cvxpy or OR-Tools.
"""

from __future__ import annotations

import dataclasses

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.rules import FRACTION, POSITIVE_INT, check_fields

__all__ = ["METHODS", "SETTINGS_RULES", "BaselineSettings"]

METHODS: tuple[str, ...] = (
    "fedlora",
    "hierfavg",
    "grouping_only",
    "grouping_freq",
    "grouping_depth",
    "legend",
    "hetlora",
    "fedra",
    "fedgsp",
    "hierfedlora",
)
"""Every method the experiment compares, baselines first."""

SETTINGS_RULES = {"uniform_intra_rounds": POSITIVE_INT, "legend_deadline_quantile": FRACTION}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BaselineSettings:
    """The knobs the methods share.

    Parameters
    ----------
    uniform_intra_rounds : int
        ``tau`` of every group in HierFAVG and in the ablations that do not optimise it
        (grouping_only, grouping_depth).
    legend_deadline_quantile : float
        In [0, 1]: LEGEND's round deadline ``T*`` is this quantile over devices of one
        full-depth local round; 1 gives every device full depth (fedlora), 0 fits the
        fastest device's round.
    """

    uniform_intra_rounds: int = 2
    legend_deadline_quantile: float = 0.25

    def __post_init__(self) -> None:
        issues = check_fields(self, SETTINGS_RULES)
        if issues:
            raise InvalidInputError(issues)
