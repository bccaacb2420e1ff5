r"""Refit the convergence model and device speeds from round reports (used by :mod:`planner.feedback`).

``history`` lists the plans a run used, in order, each with the reports made under it.

Loss model, linking ``convergence.py`` (M1)-(M4) to what a run observes:

    (F1)  P(r) = sum over global rounds s <= r of sum_k p_k(plan in force at s)
    (F2)  loss(r) = l_inf + (l_0 - l_inf) * eps ** (P(r) / R0)

``l_0 = ln(C)`` is the loss of a C-class model that has learnt nothing, ``l_inf`` the
``loss_floor`` (0 by default, and fixed: fitted from a short curve it trades off against
``R0`` and wanders), ``eps`` :data:`TARGET_GAP_FRACTION`. The target, a loss gap of ``eps``
times the initial one, takes exactly ``R0`` units of progress, so (M4) holds. Group training
losses are not fitted: they come from each group's own skewed data, biased against (F2).

(F3) Convergence refit: over ``theta = (log R0, log beta, c)`` within :data:`FIT_BOUNDS`, minimise

    sum_i ((loss_i - obs_i) / s)^2 + prior_weight * sum_j ((theta_j - prior_j) / sigma_j)^2

with ``s`` = :data:`LOSS_NOISE_NATS`, ``sigma`` = :data:`PRIOR_SCALES`: a Gaussian prior at
``problem.convergence`` against observations of that noise (scipy ``least_squares``, "trf",
started at the prior: deterministic, and reports the prior's own model predicts return it
exactly). One plan identifies only ``sum_k p_k / R0``; the prior is loosest on ``R0``, so a
run merely faster or slower than predicted moves ``R0`` (predicted time) rather than ``beta``
and ``c`` (which plan wins); plans of different depths and intra_rounds separate them.

(F4) Cost refit: ``s_i' = s_i * m_i ** damping`` when ``|m_i - 1| > tolerance``, else ``s_i``;
``m_i`` is the median over reports of device i's ``RoundReport.device_step_s`` over (C1)'s
prediction at its group's depth. Both refits start from the problem's own constants every
time, so repeated re-plans never compound them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

from hierfedlora.planner import convergence, costs
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.outcomes import Plan, RoundReport
from hierfedlora.planner.types import REFERENCE_LOSS_GAP, ConvergenceParams, DeviceProfile, PlanningProblem

__all__ = [
    "FIT_BOUNDS",
    "LOSS_NOISE_NATS",
    "PRIOR_SCALES",
    "TARGET_GAP_FRACTION",
    "ConvergenceFit",
    "History",
    "loss_curve",
    "plan_progress",
    "pooled_refit",
    "refit_convergence",
    "refit_devices",
    "step_time_ratios",
]

log = logging.getLogger(__name__)

TARGET_GAP_FRACTION = REFERENCE_LOSS_GAP
"""``eps`` of (F2): the target is a loss gap of 10% of the untrained model's."""
LOSS_NOISE_NATS = 0.05
"""``s`` of (F3): the typical round-to-round noise of an eval loss, in nats."""
PRIOR_SCALES = (2.0, 1.0, 1.0)
"""``sigma`` of (F3) for log R0, log beta, and c (the last times ``max(prior c, 1)``)."""
FIT_BOUNDS = ((1.0, 1e4), (0.05, 3.0), (0.0, 50.0))
"""Bounds of R0, beta and c in (F3)."""

History = Sequence[tuple[Plan, Sequence[RoundReport]]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConvergenceFit:
    """Refit constants; ``residual_rms`` (nats) is over the ``num_points`` eval losses."""

    params: ConvergenceParams
    residual_rms: float
    num_points: int
    prior_params: ConvergenceParams


def plan_progress(
    plan: Plan, label_counts: Mapping[str, Sequence[int]], num_layers: int, params: ConvergenceParams
) -> float:
    """(M1) ``sum_k p_k``: shares over the plan's devices, skews from its groups (``l1 / 2``)."""
    sizes = [sum(sum(label_counts[d]) for d in g.device_ids) for g in plan.groups]
    return float(
        sum(
            convergence.group_progress(
                share=size / sum(sizes),
                depth=g.depth,
                num_layers=num_layers,
                intra_rounds=g.intra_rounds,
                skew_tv=g.label_skew.l1 / 2,
                params=params,
            )
            for g, size in zip(plan.groups, sizes, strict=True)
        )
    )


def loss_curve(
    progress_per_round: float,
    params: ConvergenceParams,
    *,
    num_classes: int,
    rounds: Iterable[int],
    loss_floor: float = 0.0,
) -> tuple[float, ...]:
    """(F2) The eval loss predicted after each of ``rounds`` for one plan run from the start."""
    gap = math.log(num_classes) - loss_floor
    return tuple(
        loss_floor + gap * TARGET_GAP_FRACTION ** (r * progress_per_round / params.reference_rounds) for r in rounds
    )


def _check_history(history: History, problem: PlanningProblem) -> list[Issue]:
    known, issues, last = {d.device_id for d in problem.devices}, [], 0
    for idx, (plan, reports) in enumerate(history):
        issues += [
            Issue(f"history[{idx}].plan.device_ids", "devices of the problem", d)
            for d in plan.device_ids
            if d not in known
        ]
        for j, report in enumerate(reports):
            path = f"history[{idx}].reports[{j}]"
            if report.plan_id != plan.plan_id:
                issues.append(
                    Issue(f"{path}.plan_id", f"the id of the plan it is listed with ({plan.plan_id})", report.plan_id)
                )
            if report.global_round <= last:
                issues.append(Issue(f"{path}.global_round", f"a round after {last}", report.global_round))
            last = max(last, report.global_round)
    return issues


def _theta(params: ConvergenceParams) -> NDArray[np.float64]:
    return np.array([math.log(params.reference_rounds), math.log(params.depth_exponent), params.skew_sensitivity])


def _params(theta: NDArray[np.float64]) -> ConvergenceParams:
    return ConvergenceParams(
        reference_rounds=math.exp(theta[0]), depth_exponent=math.exp(theta[1]), skew_sensitivity=float(theta[2])
    )


def refit_convergence(
    history: History, problem: PlanningProblem, *, loss_floor: float = 0.0, prior_weight: float = 1.0
) -> ConvergenceFit:
    """(F3) Refit ``R0``, ``beta`` and ``c`` to the reports' eval losses, from the prior ``problem.convergence``.

    Parameters
    ----------
    history : sequence of (Plan, sequence of RoundReport)
        The plans the run used, in order, each with its reports (rounds increasing).
    problem : PlanningProblem
        The prior, the label counts (shares, number of classes) and ``num_layers``.
    loss_floor : float
        ``l_inf`` of (F2), nats, in ``[0, ln C)``.
    prior_weight : float
        Weight (>= 0) of the prior in (F3).

    Raises
    ------
    InvalidInputError
        A report listed with another plan, rounds not increasing, a plan device the problem
        lacks, or the weight or the floor out of range.
    """
    return pooled_refit([(history, problem)], problem.convergence, loss_floor=loss_floor, prior_weight=prior_weight)


def pooled_refit(
    runs: Sequence[tuple[History, PlanningProblem]],
    prior: ConvergenceParams,
    *,
    loss_floor: float = 0.0,
    prior_weight: float = 1.0,
) -> ConvergenceFit:
    """(F3) over several runs at once: one ``(R0, beta, c)`` for all their eval losses.

    Each run is its own ``(history, problem)`` and starts from an untrained model, so (F1)
    restarts at 0 for each; the problems must share the number of classes (``l_0``). Runs of
    different plans on the same kind of fleet (flat, hierarchical at several ``tau``, several
    depths) separate ``beta`` and ``c`` from ``R0``, which one run cannot
    (``hierfedlora.validation.calibration.calibrate`` builds the runs from run folders).

    Raises
    ------
    InvalidInputError
        As :func:`refit_convergence`, naming the run (``runs[i]``), or problems with different
        numbers of classes.
    """
    issues: list[Issue] = []
    tops = {math.log(len(problem.devices[0].label_counts)) for _, problem in runs}
    for i, (history, problem) in enumerate(runs):
        issues += [
            dataclasses.replace(issue, path=f"runs[{i}].{issue.path}") if len(runs) > 1 else issue
            for issue in _check_history(history, problem)
        ]
    if len(tops) > 1:
        classes = sorted(round(math.exp(t)) for t in tops)
        issues.append(Issue("runs", "problems with the same number of classes", classes))
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        issues.append(Issue("prior_weight", "a finite number >= 0", prior_weight))
    top = min(tops) if tops else 0.0
    if tops and not (math.isfinite(loss_floor) and 0 <= loss_floor < top):
        issues.append(Issue("loss_floor", f"a number in [0, ln(num_classes) = {top:.4g})", loss_floor))
    if issues:
        raise InvalidInputError(issues)
    curves = [_RunCurve.of(history, problem) for history, problem in runs]
    curves = [c for c in curves if c.eval_loss.size]
    num_points = sum(c.eval_loss.size for c in curves)
    if not num_points:
        return ConvergenceFit(params=prior, residual_rms=0.0, num_points=0, prior_params=prior)
    eval_loss = np.concatenate([c.eval_loss for c in curves])
    prior_theta = _theta(prior)
    sigma = np.array(PRIOR_SCALES) * np.array([1.0, 1.0, max(1.0, prior.skew_sensitivity)])

    def predicted(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        params = _params(theta)
        return np.concatenate([c.predicted(params, top, loss_floor) for c in curves])

    def residuals(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        data = (predicted(theta) - eval_loss) / LOSS_NOISE_NATS
        return np.concatenate([data, math.sqrt(prior_weight) * (theta - prior_theta) / sigma])

    lower, upper = _theta_bounds()
    start = np.clip(prior_theta, lower, upper)
    if not np.any(predicted(start) - eval_loss) and np.array_equal(start, prior_theta):  # as predicted
        return ConvergenceFit(params=prior, residual_rms=0.0, num_points=num_points, prior_params=prior)
    solution = least_squares(
        residuals,
        start,
        bounds=(lower, upper),
        method="trf",
        x_scale="jac",
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
        max_nfev=1000,
    )
    theta = np.clip(solution.x, lower, upper)
    params = prior if np.array_equal(theta, prior_theta) else _params(theta)
    params = dataclasses.replace(params, target_loss_gap=prior.target_loss_gap)  # the fit is at the reference
    rms = float(np.sqrt(np.mean((predicted(theta) - eval_loss) ** 2)))
    log.debug("convergence refit %s: rms %.3g nats over %d rounds (%s)", params, rms, num_points, solution.message)
    return ConvergenceFit(params=params, residual_rms=rms, num_points=num_points, prior_params=prior)


@dataclasses.dataclass(frozen=True, slots=True)
class _RunCurve:
    """One run's observations for (F1)-(F2): which plan each report ran under, and its losses."""

    plans: tuple[Plan, ...]
    label_counts: Mapping[str, Sequence[int]]
    num_layers: int
    plan_idx: NDArray[np.int64]
    steps: NDArray[np.float64]
    eval_loss: NDArray[np.float64]

    @classmethod
    def of(cls, history: History, problem: PlanningProblem) -> _RunCurve:
        observed = [(idx, r) for idx, (_, reports) in enumerate(history) for r in reports]
        return cls(
            plans=tuple(plan for plan, _ in history),
            label_counts={d.device_id: d.label_counts for d in problem.devices},
            num_layers=problem.cost_model.num_layers,
            plan_idx=np.array([idx for idx, _ in observed], dtype=np.int64),
            steps=np.diff([float(r.global_round) for _, r in observed], prepend=0.0),  # rounds each report adds
            eval_loss=np.array([r.eval_loss for _, r in observed], dtype=np.float64),
        )

    def predicted(self, params: ConvergenceParams, top: float, loss_floor: float) -> NDArray[np.float64]:
        rate = np.array([plan_progress(plan, self.label_counts, self.num_layers, params) for plan in self.plans])
        progress = np.cumsum(self.steps * rate[self.plan_idx])  # (F1)
        gap: NDArray[np.float64] = TARGET_GAP_FRACTION ** (progress / params.reference_rounds)  # (F2)
        return loss_floor + (top - loss_floor) * gap


def _theta_bounds() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    (r_lo, r_hi), (b_lo, b_hi), (c_lo, c_hi) = FIT_BOUNDS
    return np.array([math.log(r_lo), math.log(b_lo), c_lo]), np.array([math.log(r_hi), math.log(b_hi), c_hi])


def step_time_ratios(history: History, problem: PlanningProblem) -> dict[str, tuple[float, ...]]:
    """Observed (``device_step_s``) over predicted (C1) local-step seconds, per device and report.

    The prediction uses the problem's ``compute_scale``, the group's depth and the plan's
    batch size. Devices the problem or the plan lacks, and observations that are not finite
    and positive, are skipped.
    """
    devices = {d.device_id: d for d in problem.devices}
    ratios: dict[str, list[float]] = {}
    for plan, reports in history:
        depth_of = {d: g.depth for g in plan.groups for d in g.device_ids}
        for report in reports:
            for device_id, observed_s in sorted(report.device_step_s.items()):
                device, depth = devices.get(device_id), depth_of.get(device_id)
                if device is None or depth is None or not (math.isfinite(observed_s) and observed_s > 0):
                    continue
                predicted_s = costs.step_time_s(
                    problem.cost_model, compute_scale=device.compute_scale, depth=depth, batch_size=plan.batch_size
                )
                ratios.setdefault(device_id, []).append(observed_s / predicted_s)
    return {device_id: tuple(values) for device_id, values in ratios.items()}


def refit_devices(
    problem: PlanningProblem, history: History, *, tolerance: float = 0.05, damping: float = 1.0
) -> tuple[DeviceProfile, ...]:
    """(F4) ``problem.devices`` with ``compute_scale`` refit to the observed step seconds.

    Raises
    ------
    InvalidInputError
        ``tolerance`` not in [0, 1), or ``damping`` not in (0, 1].
    """
    issues = []
    if not (math.isfinite(tolerance) and 0 <= tolerance < 1):
        issues.append(Issue("tolerance", "a number in [0, 1)", tolerance))
    if not (math.isfinite(damping) and 0 < damping <= 1):
        issues.append(Issue("damping", "a number in (0, 1]", damping))
    if issues:
        raise InvalidInputError(issues)
    ratios = step_time_ratios(history, problem)
    refit = []
    for device in problem.devices:
        ratio = float(np.median(ratios[device.device_id])) if device.device_id in ratios else 1.0
        if abs(ratio - 1.0) > tolerance:
            device = dataclasses.replace(device, compute_scale=device.compute_scale * ratio**damping)
        refit.append(device)
    return tuple(refit)
