"""Evaluations of the global model inside a global round: :class:`IntraRoundEval`.

A method with intra-group rounds holds a merged global model only at the end of a global round. To
see how fast it gets somewhere *within* a round, the runtime can evaluate, as an observer, the model
the server *would* hold had the global round been cut after the groups' ``j``-th intra-group round
(``RunOptions.evaluate_intra_rounds``; ``runtime.intra_evaluation`` defines it exactly):

- the model: the run's aggregation rule merges, layer by layer, every group's state after its
  ``min(j, tau_k)``-th intra-group round (groups that have not yet contributed an update are left
  out, as at the round's end);
- its simulated time: the round's start plus the slowest group's time through those intra-group
  rounds plus the round's global aggregation time, i.e. when that cut round would have ended. With
  ``j`` the round's largest ``tau`` it is the round's end itself, so only ``j`` below it is recorded.

The observer is not part of the protocol: nothing is sent for it, the clock is not charged for it,
and training does not depend on it (a run with it yields the same round-end reports and adapters).

Examples
--------
>>> IntraRoundEval(intra_round=2, sim_time_s=5.5, eval_loss=2.1, eval_accuracy=0.25).intra_round
2
>>> IntraRoundEval(intra_round=0, sim_time_s=5.5, eval_loss=2.1, eval_accuracy=0.25)
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: intra_round must be an integer >= 1; got 0
"""

from __future__ import annotations

import dataclasses
import math

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.rules import FINITE_NON_NEGATIVE, POSITIVE_INT, Rule, check_fields, is_number

__all__ = ["INTRA_EVAL_RULES", "IntraRoundEval"]

INTRA_EVAL_RULES: dict[str, Rule] = {
    "intra_round": POSITIVE_INT,
    "sim_time_s": FINITE_NON_NEGATIVE,
    "eval_loss": FINITE_NON_NEGATIVE,
    "eval_accuracy": Rule("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1, (1.5, math.nan)),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IntraRoundEval:
    """The observed global model after every group's ``intra_round``-th intra-group round (1-based).

    ``sim_time_s`` is on the run's simulated clock (see the module docstring); ``eval_loss`` and
    ``eval_accuracy`` are measured on the same held-out rows as the round-end evaluation.
    """

    intra_round: int
    sim_time_s: float
    eval_loss: float
    eval_accuracy: float

    def __post_init__(self) -> None:
        issues = check_fields(self, INTRA_EVAL_RULES)
        if issues:
            raise InvalidInputError(issues)
