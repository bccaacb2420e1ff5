"""Round report contract types: what one global round did (:class:`RoundReport`, one JSON line per round in
``reports.jsonl``) and each group's part of it (:class:`GroupRoundResult`), with their field rules.

The runtime writes them; ``planner.feedback`` reads them back to re-plan.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from hierfedlora.planner.errors import Issue, raise_if_any
from hierfedlora.planner.intra_evals import IntraRoundEval
from hierfedlora.planner.rules import (
    FINITE_NON_NEGATIVE,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Rule,
    check_fields,
    is_number,
    optional,
)
from hierfedlora.planner.schema import SCHEMA_RULE, SCHEMA_VERSION

__all__ = ["GROUP_ROUND_RULES", "REPORT_RULES", "GroupRoundResult", "RoundReport"]


GROUP_ROUND_RULES: dict[str, Rule] = {
    "group_id": NON_NEGATIVE_INT,
    "loss": optional(FINITE_NON_NEGATIVE),
    "accuracy": Rule(
        "a number in [0, 1] or null (not evaluated)",
        lambda v: v is None or (is_number(v) and 0 <= v <= 1),
        (1.5, math.nan),
    ),
    "upload_bytes": NON_NEGATIVE_INT,
    "download_bytes": NON_NEGATIVE_INT,
    "sim_time_s": FINITE_NON_NEGATIVE,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupRoundResult:
    """One group's part of a global round: its training loss (``None`` when no device of the
    group contributed, e.g. all dropped out), its model's test accuracy (``None`` when per-group
    evaluation is off or the group contributed nothing), bytes its devices moved, and its
    simulated time (``intra_rounds`` intra-group rounds)."""

    group_id: int
    loss: float | None
    accuracy: float | None
    upload_bytes: int
    download_bytes: int
    sim_time_s: float

    def __post_init__(self) -> None:
        raise_if_any(check_fields(self, GROUP_ROUND_RULES))


def _ordered_within(evals: tuple[IntraRoundEval, ...], end_s: object) -> bool:
    if not evals or not FINITE_NON_NEGATIVE.accepts(end_s):
        return True  # nothing to order, or sim_time_s is reported by its own rule
    times = [e.sim_time_s for e in evals]
    levels = [e.intra_round for e in evals]
    ascending = all(a < b for a, b in itertools.pairwise(levels))
    return ascending and times == sorted(times) and times[-1] <= end_s  # type: ignore[operator]


REPORT_RULES: dict[str, Rule] = {
    "plan_id": NON_EMPTY_STRING,
    "global_round": POSITIVE_INT,
    "sim_time_s": FINITE_NON_NEGATIVE,
    "wall_time_s": FINITE_NON_NEGATIVE,
    "eval_loss": FINITE_NON_NEGATIVE,
    "eval_accuracy": Rule("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1, (1.5, math.nan)),
    "seed": NON_NEGATIVE_INT,
    "aggregation": NON_EMPTY_STRING,
    "schema_version": SCHEMA_RULE,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoundReport:
    """What one global round did; one JSON line per round in ``reports.jsonl``.

    ``sim_time_s`` is the simulated clock *after* the round; ``wall_time_s`` the host
    seconds the round took. ``measured_step_s`` maps device id to its mean measured
    local-step seconds on this host in this round; ``device_step_s`` to the mean local-step
    seconds the simulated clock charged that device (what a real deployment measures on the
    device; ``planner.feedback`` refits device speeds from it). ``dropped_device_ids`` names
    the devices that sent nothing this round (offline, or late for a deadline);
    ``rejected_device_ids`` those whose update the server's screening refused (non-finite, or
    far longer than its group's). ``aggregation`` names the run's aggregation rule
    (``runtime.aggregation_rules``). ``intra_evals`` holds the observed global model after each
    intra-group round but the last, in order, when the run asked for them
    (``RunOptions.evaluate_intra_rounds``; :mod:`hierfedlora.planner.intra_evals`), with simulated
    times before ``sim_time_s``.
    """

    plan_id: str
    global_round: int
    sim_time_s: float
    wall_time_s: float
    groups: tuple[GroupRoundResult, ...]
    measured_step_s: dict[str, float] = dataclasses.field(default_factory=dict)
    device_step_s: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_loss: float
    eval_accuracy: float
    dropped_device_ids: tuple[str, ...] = ()
    rejected_device_ids: tuple[str, ...] = ()
    seed: int = 0
    aggregation: str = "fedavg"
    intra_evals: tuple[IntraRoundEval, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, REPORT_RULES)
        if not (isinstance(self.intra_evals, tuple) and all(isinstance(e, IntraRoundEval) for e in self.intra_evals)):
            issues.append(Issue("intra_evals", "a list of IntraRoundEval objects", self.intra_evals))
        elif not _ordered_within(self.intra_evals, self.sim_time_s):
            issues.append(
                Issue(
                    "intra_evals",
                    f"intra rounds ascending, at simulated times ascending and <= sim_time_s ({self.sim_time_s})",
                    [(e.intra_round, e.sim_time_s) for e in self.intra_evals],
                )
            )
        raise_if_any(issues)

    @property
    def upload_bytes(self) -> int:
        """Bytes all devices sent this round."""
        return sum(g.upload_bytes for g in self.groups)

    @property
    def download_bytes(self) -> int:
        """Bytes all devices received this round."""
        return sum(g.download_bytes for g in self.groups)
