"""The convergence model's constants (:class:`ConvergenceParams`), where the defaults come from, and the target:
:func:`target_for_loss` turns an eval-loss level into the ``target_loss_gap`` the planner plans for.

``planner.convergence`` evaluates the model; ``planner.refit`` fits these constants to measured runs.
"""

from __future__ import annotations

import dataclasses
import math

from hierfedlora.planner.errors import Issue, raise_if_any
from hierfedlora.planner.rules import (
    FINITE_NON_NEGATIVE,
    FINITE_POSITIVE,
    Rule,
    check_fields,
    is_int,
)

__all__ = ["CALIBRATION_SOURCE", "CONVERGENCE_RULES", "REFERENCE_LOSS_GAP", "ConvergenceParams", "target_for_loss"]


REFERENCE_LOSS_GAP = 0.1
"""The loss gap ``reference_rounds`` is defined at: 10% of an untrained model's (``planner.refit`` (F2))."""

CALIBRATION_SOURCE = (
    "fitted by 'hierfedlora calibrate' (planner.refit.pooled_refit) to the four baseline runs of the 'pilot' "
    "experiment preset (docs/results/pilot: 80 devices of the 'paper' mix, WordNet at Dirichlet alpha 0.3, "
    "seed 7, all-MiniLM-L6-v2 with LoRA r=8, batch 8, 24 tokens, 2 local steps; 2026-12-05), rounded to three digits"
)
"""Where the default :class:`ConvergenceParams` come from."""

CONVERGENCE_RULES: dict[str, Rule] = {
    "depth_exponent": FINITE_POSITIVE,
    "skew_sensitivity": FINITE_NON_NEGATIVE,
    "reference_rounds": FINITE_POSITIVE,
    "target_loss_gap": Rule(
        "a number in (0, 1): the target eval loss gap as a fraction of an untrained model's",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < 1,
        (0.0, 1.0, 1.5, math.nan, "0.1"),
    ),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConvergenceParams:
    """Constants of the convergence model (``planner.convergence``); refit by feedback.

    Progress of group k per global round is ``w_k * (d_k / L) ** depth_exponent *
    tau_k / (1 + skew_sensitivity * skew_k * (tau_k - 1))``; rounds to target are
    ``target_rounds / sum_k progress_k``.

    The target. A run's eval loss falls from ``l_0 = ln C`` (C classes, nothing learnt) towards
    a floor ``l_inf`` (0 by default), closing the gap geometrically in progress (``planner.refit``
    (F2)). ``reference_rounds`` (R0) is the rounds flat full-depth FedAvg needs to bring the gap
    to ``REFERENCE_LOSS_GAP`` = 10% of ``l_0 - l_inf``; ``target_loss_gap`` sets the target this
    problem plans for, and rounds scale with it as ``R0 * ln(target_loss_gap) / ln(0.1)``.
    :func:`target_for_loss` turns a loss level in nats into that fraction.

    The defaults are calibrated, not guessed: :data:`CALIBRATION_SOURCE`. They were fitted at
    2 local steps of batch 8 per intra-group round; the model treats rounds as independent of
    the fleet size and of the samples a round processes (``planner.convergence`` says why).
    """

    depth_exponent: float = 0.108
    skew_sensitivity: float = 0.241
    reference_rounds: float = 58.3
    target_loss_gap: float = REFERENCE_LOSS_GAP

    def __post_init__(self) -> None:
        raise_if_any(check_fields(self, CONVERGENCE_RULES))

    @property
    def target_rounds(self) -> float:
        """Rounds flat full-depth FedAvg needs to reach ``target_loss_gap``: ``R0 ln(gap) / ln(0.1)``."""
        if self.target_loss_gap == REFERENCE_LOSS_GAP:
            return self.reference_rounds  # exactly, not through two logarithms
        return self.reference_rounds * math.log(self.target_loss_gap) / math.log(REFERENCE_LOSS_GAP)

    def describe_target(self) -> str:
        """The target in words, e.g. ``"eval loss gap 10% of the untrained model's (R0 58.3 rounds)"``."""
        return (
            f"eval loss gap {self.target_loss_gap:.3g} of the untrained model's (ln C - floor); "
            f"flat FedAvg needs {self.target_rounds:.3g} rounds"
        )


def target_for_loss(loss_nats: float, num_classes: int, *, loss_floor_nats: float = 0.0) -> float:
    """The ``target_loss_gap`` of an eval-loss target: ``(loss - floor) / (ln C - floor)``.

    Examples
    --------
    >>> round(target_for_loss(0.1 * math.log(26), 26), 6)
    0.1

    Raises
    ------
    InvalidInputError
        If the loss is not strictly between the floor and ``ln(num_classes)``.
    """
    issues = []
    if not (is_int(num_classes) and num_classes >= 2):
        issues.append(Issue("num_classes", "an integer >= 2", num_classes))
    elif not (
        isinstance(loss_nats, int | float)
        and math.isfinite(loss_nats)
        and loss_floor_nats < loss_nats < math.log(num_classes)
    ):
        issues.append(
            Issue(
                "target_loss_nats",
                f"a loss between the floor {loss_floor_nats:g} and "
                f"ln({num_classes}) = {math.log(num_classes):.4g} nats",
                loss_nats,
            )
        )
    raise_if_any(issues)
    return (loss_nats - loss_floor_nats) / (math.log(num_classes) - loss_floor_nats)
