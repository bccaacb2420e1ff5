"""The convergence model: how many global rounds a plan needs to reach the target.

In the spirit of local-SGD bounds for hierarchical FL (an optimality gap after R rounds with
terms in the intra-group drift and the groups' drift from the global data), group ``k``
makes progress per global round

    (M1)  p_k = w_k * g(d_k) * h(tau_k, delta_k)
    (M2)  g(d) = (d / L) ** beta                         concave, increasing in depth
    (M3)  h(tau, delta) = tau / (1 + c * delta * (tau - 1))

with ``w_k`` the group's share of training samples, ``delta_k`` the total-variation
distance (L1 / 2, in [0, 1]) of its pooled label distribution from the global one, and
``beta``, ``c`` the constants in :class:`ConvergenceParams`. ``h`` says each extra
intra-group round is worth a global one when the group is IID (``delta = 0``) and less as
its skew grows; for ``c * delta >= 1`` extra rounds stop helping. Rounds and time to target:

    (M4)  R = R0 / sum_k p_k
    (M5)  time_to_target = R * T        (T: the global round time, costs.py (C7))

``R0`` is the rounds a single IID group at full depth with ``tau = 1`` (flat FedAvg of the
whole fleet) needs; a flat full-depth plan has ``sum_k p_k = 1``. ``planner.feedback``
refits ``beta``, ``c`` and ``R0`` from measured rounds during a run; ``planner.refit.pooled_refit``
(``hierfedlora calibrate``) fits them to several finished runs of different plans at once, which
is what separates ``beta`` and ``c`` from ``R0``. The defaults of ConvergenceParams are the
calibrated ones (``types.CALIBRATION_SOURCE``: R0 58.3, beta 0.108, c 0.241 from the pilot runs).

The target. ``R0`` is the rounds to an eval loss gap of 10% of an untrained model's
(``refit`` (F2)); ``ConvergenceParams.target_loss_gap`` moves the target, and (M4) then uses
``R0 · ln(target_loss_gap) / ln(0.1)`` (``ConvergenceParams.target_rounds``), since (F2) closes
the gap geometrically in progress. Plans name their target (``Plan.target``).

Data per round. (M4) has no term in the fleet size or in the samples a round processes: at a fixed
per-device work (``local_steps`` x batch), a global round averages more devices' updates when the
fleet grows, which lowers their variance but not their expected size, so the terms of local-SGD
bounds that dominate (optimisation and drift) do not fall with N; planning fewer rounds for larger
fleets would be optimistic. The README's concepts section gives the runs checked against this and
their limits; ``planner.feedback`` refits ``R0`` from a run's own rounds either way.

Examples
--------
>>> params = ConvergenceParams(depth_exponent=0.5, skew_sensitivity=4.0, reference_rounds=30.0)
>>> group_progress(share=1.0, depth=6, num_layers=6, intra_rounds=1, skew_tv=0.3, params=params)
1.0
>>> round(intra_rounds_factor(4, 0.05, 4.0), 4)  # 4 / (1 + 4 * 0.05 * 3)
2.5
>>> rounds_to_target(0.5, params)
60.0
"""

from __future__ import annotations

from hierfedlora.planner.types import ConvergenceParams

__all__ = ["depth_factor", "group_progress", "intra_rounds_factor", "rounds_to_target"]


def depth_factor(depth: int, num_layers: int, depth_exponent: float) -> float:
    """(M2) ``(depth / num_layers) ** depth_exponent``."""
    return float((depth / num_layers) ** depth_exponent)


def intra_rounds_factor(intra_rounds: int, skew_tv: float, skew_sensitivity: float) -> float:
    """(M3) ``tau / (1 + c * delta * (tau - 1))``."""
    return intra_rounds / (1.0 + skew_sensitivity * skew_tv * (intra_rounds - 1))


def group_progress(
    *, share: float, depth: int, num_layers: int, intra_rounds: int, skew_tv: float, params: ConvergenceParams
) -> float:
    """(M1) Progress of one group per global round."""
    return (
        share
        * depth_factor(depth, num_layers, params.depth_exponent)
        * intra_rounds_factor(intra_rounds, skew_tv, params.skew_sensitivity)
    )


def rounds_to_target(total_progress: float, params: ConvergenceParams) -> float:
    """(M4) ``R0 / sum_k p_k``, with ``R0`` at the problem's target (``params.target_rounds``)."""
    return params.target_rounds / total_progress
