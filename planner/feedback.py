r"""Feedback: refit the convergence model and device speeds from round reports, and re-plan.

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

(F5) Re-planning, on the refit problem. A fleet change (devices removed or added) always
re-plans with ``make_plan``. Otherwise the grouping is kept and depths and intra_rounds are
re-assigned (exact and deterministic): grouping depends on label counts, and on speeds only
through ``speed_spread_weight`` and ``max_speed_ratio`` (when those are in use and speeds
changed, ``make_plan`` re-groups), so re-solving it would only add churn and a time-limited
search's nondeterminism. The candidate replaces the plan iff its structure differs and
``(T_old - T_new) / T_old >= min_relative_gain`` (times to target by ``evaluate_assignment``
under the refit problem; the progress still missing is common to both and cancels), or iff
the plan breaks memory or a budget under the refit costs.

Examples
--------
>>> from hierfedlora.planner.outcomes import RoundReport
>>> from hierfedlora.planner.types import CostModel, DeviceProfile
>>> cost = CostModel(model_name="toy", num_layers=2, batch_size=1, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.5, 0.5), layer_backward_s=(1.0, 1.0),
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1_000_000, head_bytes=0,
...     activation_bytes_per_sample_per_layer=1, optimizer_bytes_per_layer=0,
...     base_model_bytes=1_000_000)
>>> devices = tuple(DeviceProfile(device_id=f"d{i}", label_counts=c, compute_scale=1.0,
...     memory_bytes=2**30, uplink_mbps=16.0, downlink_mbps=16.0)
...     for i, c in enumerate([(10, 0), (0, 10), (20, 0), (0, 20)]))
>>> problem = PlanningProblem(devices=devices, cost_model=cost, num_groups=2, depth_choices=(1, 2),
...     intra_rounds_choices=(1, 2), local_steps=1, intra_latency_s=0.0, global_latency_s=0.0,
...     backhaul_mbps=8.0, convergence=ConvergenceParams(depth_exponent=1.0, reference_rounds=10.0))
>>> plan = make_plan(problem)  # both (unskewed) groups at depth 2, intra_rounds 2: progress 2
>>> rate = plan_progress(plan, {d.device_id: d.label_counts for d in devices}, 2, problem.convergence)
>>> losses = loss_curve(rate, problem.convergence, num_classes=2, rounds=(1, 2, 3))
>>> [round(loss, 3) for loss in losses]  # ln 2 * 0.1 ** (2 r / 10)
[0.437, 0.276, 0.174]

Reports as predicted (a step at depth 2 takes (C1) 3 s) leave the constants and the plan:

>>> def reports(d0_step_s):
...     return [RoundReport(plan_id=plan.plan_id, global_round=r, sim_time_s=14.0 * r, wall_time_s=0.0,
...         groups=(), device_step_s={"d0": d0_step_s, "d1": 3.0}, eval_loss=loss, eval_accuracy=0.5)
...         for r, loss in zip((1, 2, 3), losses)]
>>> refit_convergence([(plan, reports(3.0))], problem).params == problem.convergence
True
>>> replan(plan, [(plan, reports(3.0))], problem).reason
'the refit leaves the best plan unchanged'

A device twice as slow as profiled gets twice the compute_scale, and its group a shallower depth:

>>> [d.compute_scale for d in refit_devices(problem, [(plan, reports(6.0))])]
[2.0, 1.0, 1.0, 1.0]
>>> decision = replan(plan, [(plan, reports(6.0))], problem)
>>> decision.changed, [(g.depth, g.intra_rounds) for g in decision.plan.groups], round(decision.predicted_gain, 3)
(True, [(1, 2), (2, 2)], 0.16)
>>> decision.reason  # 10 * 14 / (5 / 3) = 84 s to target instead of 10 * 20 / 2 = 100 s
'the refit (beta 1, c 4, R0 10; compute_scale of d0) predicts 16.0% less time to target'
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

from hierfedlora.planner import convergence, costs
from hierfedlora.planner.assignment import assign_depths_and_rounds, evaluate_assignment
from hierfedlora.planner.assignment_data import build_assignment_data
from hierfedlora.planner.errors import InfeasibleError, InvalidInputError, Issue, NoSolutionError
from hierfedlora.planner.io import sha256_of
from hierfedlora.planner.outcomes import Grouping, Limit, Plan, RoundReport, SolveStatus
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.types import ConvergenceParams, DeviceProfile, PlanningProblem

__all__ = [
    "FIT_BOUNDS",
    "LOSS_NOISE_NATS",
    "PRIOR_SCALES",
    "TARGET_GAP_FRACTION",
    "ConvergenceFit",
    "History",
    "ReplanDecision",
    "Replanner",
    "history_from_reports",
    "loss_curve",
    "plan_progress",
    "refit_convergence",
    "refit_devices",
    "replan",
    "step_time_ratios",
]

log = logging.getLogger(__name__)

TARGET_GAP_FRACTION = 0.1
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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReplanDecision:
    """The plan in force next and why; ``devices`` are the refit profiles.

    ``predicted_gain`` is ``(T_old - T_new) / T_old``, both times to target under the refit
    problem, for the candidate (also when the hysteresis refused it; 0 when it equals the
    plan). After a fleet change ``T_old`` prices the old groups without the departed devices
    (NaN if none is left).
    """

    plan: Plan
    changed: bool
    reason: str
    predicted_gain: float
    fit: ConvergenceFit
    devices: tuple[DeviceProfile, ...]


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
    top = math.log(len(problem.devices[0].label_counts))
    issues = _check_history(history, problem)
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        issues.append(Issue("prior_weight", "a finite number >= 0", prior_weight))
    if not (math.isfinite(loss_floor) and 0 <= loss_floor < top):
        issues.append(Issue("loss_floor", f"a number in [0, ln(num_classes) = {top:.4g})", loss_floor))
    if issues:
        raise InvalidInputError(issues)
    prior = problem.convergence
    observed = [(idx, r) for idx, (_, reports) in enumerate(history) for r in reports]
    if not observed:
        return ConvergenceFit(params=prior, residual_rms=0.0, num_points=0, prior_params=prior)
    counts, num_layers = {d.device_id: d.label_counts for d in problem.devices}, problem.cost_model.num_layers
    plan_idx = np.array([idx for idx, _ in observed])
    steps = np.diff([float(r.global_round) for _, r in observed], prepend=0.0)  # rounds each report adds
    eval_loss = np.array([r.eval_loss for _, r in observed])
    prior_theta = _theta(prior)
    sigma = np.array(PRIOR_SCALES) * np.array([1.0, 1.0, max(1.0, prior.skew_sensitivity)])

    def predicted(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        params = _params(theta)
        rate = np.array([plan_progress(plan, counts, num_layers, params) for plan, _ in history])
        progress = np.cumsum(steps * rate[plan_idx])  # (F1)
        gap: NDArray[np.float64] = TARGET_GAP_FRACTION ** (progress / params.reference_rounds)  # (F2)
        return loss_floor + (top - loss_floor) * gap

    def residuals(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        data = (predicted(theta) - eval_loss) / LOSS_NOISE_NATS
        return np.concatenate([data, math.sqrt(prior_weight) * (theta - prior_theta) / sigma])

    lower, upper = _theta_bounds()
    start = np.clip(prior_theta, lower, upper)
    if not np.any(predicted(start) - eval_loss) and np.array_equal(start, prior_theta):  # as predicted
        return ConvergenceFit(params=prior, residual_rms=0.0, num_points=len(observed), prior_params=prior)
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
    rms = float(np.sqrt(np.mean((predicted(theta) - eval_loss) ** 2)))
    log.debug("convergence refit %s: rms %.3g nats over %d rounds (%s)", params, rms, len(observed), solution.message)
    return ConvergenceFit(params=params, residual_rms=rms, num_points=len(observed), prior_params=prior)


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


def _grouping(groups: Sequence[Sequence[str]], problem: PlanningProblem) -> Grouping:
    """Device ids per group as positions into ``problem.devices``."""
    position = {d.device_id: idx for idx, d in enumerate(problem.devices)}
    members = tuple(tuple(sorted(position[d] for d in ids)) for ids in groups)
    return Grouping(
        members=members,
        objective=0.0,
        bound=0.0,
        status=SolveStatus.OPTIMAL,
        limit=None,
        solve_time_s=0.0,
        method="kept",
    )


def _time_to_target_s(plan: Plan, problem: PlanningProblem) -> float:
    """``plan``'s groups on the devices ``problem`` still has, priced by ``evaluate_assignment``."""
    sub = dataclasses.replace(problem, devices=tuple(d for d in problem.devices if d.device_id in plan.device_ids))
    known = {d.device_id for d in sub.devices}
    kept = [(ids, g) for g in plan.groups if (ids := [d for d in g.device_ids if d in known])]
    if not kept:
        return math.nan
    depths, rounds = [g.depth for _, g in kept], [g.intra_rounds for _, g in kept]
    return float(evaluate_assignment(_grouping([ids for ids, _ in kept], sub), sub, depths, rounds))


def _broken(plan: Plan, problem: PlanningProblem) -> list[str]:
    """Constraint families ``plan`` (on exactly ``problem``'s devices) breaks under ``problem``'s costs."""
    if any(
        g.depth not in problem.effective_depth_choices or g.intra_rounds not in problem.intra_rounds_choices
        for g in plan.groups
    ):
        return ["choices"]
    data = build_assignment_data(_grouping([g.device_ids for g in plan.groups], problem), problem)
    choices = np.array([data.choice_index(g.depth, g.intra_rounds) for g in plan.groups])
    result = data.evaluate(choices)
    broken = [] if data.fits[np.arange(len(choices)), choices].all() else ["memory"]
    if data.round_limit_s is not None and result.round_time_s > data.round_limit_s:
        broken.append("round_budget")
    if data.traffic_limit_bytes is not None and result.traffic_bytes > data.traffic_limit_bytes:
        broken.append("traffic_budget")
    return broken


def _reassigned(plan: Plan, problem: PlanningProblem) -> Plan:
    """(F5) ``plan``'s grouping kept, depth and intra_rounds re-assigned under ``problem``."""
    started = time.perf_counter()
    assignment = assign_depths_and_rounds(_grouping([g.device_ids for g in plan.groups], problem), problem)
    status, limit = SolveStatus.OPTIMAL, None
    if assignment.status is not SolveStatus.OPTIMAL:
        status, limit = SolveStatus.FEASIBLE, assignment.limit or Limit.TIME
    elif plan.grouping_relative_gap > problem.solver.relative_gap_tolerance:  # the kept grouping is unproven
        status, limit = SolveStatus.FEASIBLE, plan.limit or Limit.TIME
    groups = tuple(
        dataclasses.replace(
            g,
            depth=assignment.depths[k],
            intra_rounds=assignment.intra_rounds[k],
            local_steps=problem.local_steps,
            predicted_intra_round_s=assignment.intra_round_time_s[k],
        )
        for k, g in enumerate(plan.groups)
    )
    return dataclasses.replace(
        plan,
        groups=groups,
        predicted_round_time_s=assignment.round_time_s,
        predicted_rounds_to_target=assignment.rounds_to_target,
        objective_value=assignment.objective_value,
        dual_bound=assignment.dual_bound,
        status=status,
        limit=limit,
        solve_time_s=time.perf_counter() - started,
        seed=problem.solver.seed,
        batch_size=problem.effective_batch_size,
        cost_model_sha256=problem.cost_model.model_sha256 or sha256_of(problem.cost_model),
        fleet_sha256=sha256_of(problem.devices),
        parent_plan_id=plan.plan_id,
    )


def _structure(plan: Plan) -> frozenset[tuple[frozenset[str], int, int, int]]:
    return frozenset((frozenset(g.device_ids), g.depth, g.intra_rounds, g.local_steps) for g in plan.groups)


def replan(
    plan: Plan,
    history: History,
    problem: PlanningProblem,
    *,
    removed_device_ids: Sequence[str] = (),
    min_relative_gain: float = 0.05,
    reason_prefix: str = "",
) -> ReplanDecision:
    """(F5) Refit, then keep ``plan`` or replace it; pure, and logged with its reason and gain.

    Parameters
    ----------
    plan : Plan
        The plan in force.
    history : sequence of (Plan, sequence of RoundReport)
        Every plan the run used, in order, with its reports.
    problem : PlanningProblem
        The problem as first posed, departed devices included: its constants are the priors
        and its device profiles what the refits correct.
    removed_device_ids : sequence of str
        Devices that left the fleet; the plan returned never uses them.
    min_relative_gain : float
        Hysteresis: without a fleet change, the plan is replaced only for at least this
        fraction less predicted time to target.
    reason_prefix : str
        Put before the reason (``"after global round 10: "``).

    Raises
    ------
    InvalidInputError
        Bad history (:func:`refit_convergence`), a removed id or plan device the problem
        lacks, no device left, or ``min_relative_gain`` not a finite number >= 0.
    InfeasibleError, NoSolutionError, SolverFailedError
        From ``make_plan``, when the fleet changed or speeds re-group. Without a fleet change
        an infeasible or timed-out re-assignment keeps the plan (it can still run).
    """
    known, removed = {d.device_id for d in problem.devices}, sorted(set(removed_device_ids))
    issues = [Issue("removed_device_ids", "ids of devices in the problem", d) for d in removed if d not in known]
    issues += [Issue("plan.device_ids", "devices of the problem", d) for d in plan.device_ids if d not in known]
    if not (math.isfinite(min_relative_gain) and min_relative_gain >= 0):
        issues.append(Issue("min_relative_gain", "a finite number >= 0", min_relative_gain))
    if not issues and len(removed) == len(known):
        issues.append(Issue("removed_device_ids", "ids leaving at least one device", tuple(removed)))
    if issues:
        raise InvalidInputError(issues)
    fit = refit_convergence(history, problem)
    devices = tuple(d for d in refit_devices(problem, history) if d.device_id not in removed)
    refit = dataclasses.replace(problem, devices=devices, convergence=fit.params)
    old_s = _time_to_target_s(plan, refit)

    def decide(new: Plan, reason: str, gain: float = 0.0) -> ReplanDecision:
        changed = new is not plan
        log.info("re-plan %s -> %s: %s (predicted gain %.2f%%)", plan.plan_id, new.plan_id, reason, 100 * gain)
        return ReplanDecision(plan=new, changed=changed, reason=reason, predicted_gain=gain, fit=fit, devices=devices)

    gone = [d for d in plan.device_ids if d in removed]
    added = sorted({d.device_id for d in devices} - set(plan.device_ids))
    if gone or added:  # the plan cannot run as it is
        changes = [f"{verb} {', '.join(ids)}" for verb, ids in (("removed", gone), ("added", added)) if ids]
        reason = f"{reason_prefix}fleet changed: {'; '.join(changes)}"
        new = make_plan(refit, parent_plan_id=plan.plan_id, reason=reason)
        return decide(new, reason, (old_s - _time_to_target_s(new, refit)) / old_s)
    profiled = {d.device_id: d.compute_scale for d in problem.devices}
    rescaled = [d.device_id for d in devices if d.compute_scale != profiled[d.device_id]]
    try:
        if rescaled and (problem.speed_spread_weight > 0 or problem.max_speed_ratio is not None):
            candidate = make_plan(refit, parent_plan_id=plan.plan_id)
        else:
            candidate = _reassigned(plan, refit)
    except (InfeasibleError, NoSolutionError) as err:
        return decide(plan, f"{reason_prefix}no plan meets the constraints under the refit costs, kept ({err})")
    if _structure(candidate) == _structure(plan):
        return decide(plan, f"{reason_prefix}the refit leaves the best plan unchanged")
    gain = (old_s - _time_to_target_s(candidate, refit)) / old_s
    params = fit.params
    fitted = f"beta {params.depth_exponent:.3g}, c {params.skew_sensitivity:.3g}, R0 {params.reference_rounds:.3g}"
    fitted += f"; compute_scale of {', '.join(rescaled)}" if rescaled else ""
    if broken := _broken(plan, refit):
        reason = f"{reason_prefix}the plan breaks {', '.join(broken)} under the refit ({fitted})"
    elif gain >= min_relative_gain:
        reason = f"{reason_prefix}the refit ({fitted}) predicts {gain:.1%} less time to target"
    else:
        return decide(
            plan, f"{reason_prefix}predicted gain {gain:.1%} is below the threshold {min_relative_gain:.1%}", gain
        )
    return decide(dataclasses.replace(candidate, reason=reason), reason, gain)


def history_from_reports(
    reports: Sequence[RoundReport], plans: Mapping[str, Plan]
) -> tuple[tuple[Plan, tuple[RoundReport, ...]], ...]:
    """Runs of consecutive reports of one plan, each with that plan, in order.

    Raises
    ------
    InvalidInputError
        A report names a plan ``plans`` lacks.
    """
    issues = [
        Issue(f"reports[{i}].plan_id", "the id of a plan the run used", r.plan_id)
        for i, r in enumerate(reports)
        if r.plan_id not in plans
    ]
    if issues:
        raise InvalidInputError(issues)
    history: list[tuple[Plan, list[RoundReport]]] = []
    for report in reports:
        if not history or history[-1][0].plan_id != report.plan_id:
            history.append((plans[report.plan_id], []))
        history[-1][1].append(report)
    return tuple((plan, tuple(run)) for plan, run in history)


class Replanner:
    """The closed loop's planning half, which the runtime consults after every committed round.

    It re-plans (:func:`replan`) when ``len(reports)`` is a multiple of ``every_rounds``, and at
    once when a report's ``dropped_device_ids`` names a device of the plan in force (ids the
    problem lacks are ignored). Its answer depends only on its arguments, so a resumed run
    that asks again gets the same plan; ``decisions`` keeps every decision made.

    Raises
    ------
    InvalidInputError
        ``every_rounds`` not an integer >= 1, or ``min_relative_gain`` not a finite number >= 0.
    """

    def __init__(self, problem: PlanningProblem, *, every_rounds: int, min_relative_gain: float = 0.05) -> None:
        issues = []
        if not (isinstance(every_rounds, int) and not isinstance(every_rounds, bool) and every_rounds >= 1):
            issues.append(Issue("every_rounds", "an integer >= 1", every_rounds))
        if not (
            isinstance(min_relative_gain, int | float) and math.isfinite(min_relative_gain) and min_relative_gain >= 0
        ):
            issues.append(Issue("min_relative_gain", "a finite number >= 0", min_relative_gain))
        if issues:
            raise InvalidInputError(issues)
        self.problem, self.every_rounds, self.min_relative_gain = problem, every_rounds, float(min_relative_gain)
        self.decisions: list[ReplanDecision] = []
        self._plans: dict[str, Plan] = {}

    def __call__(
        self, plan: Plan, reports: Sequence[RoundReport], plans: Mapping[str, Plan] | None = None
    ) -> Plan | None:
        """The plan to switch to after ``reports`` (all of the run's, in order), or ``None``.

        ``plans`` maps ids to the plans the run used; plans seen or made before are kept too.
        """
        self._plans.update({plan.plan_id: plan, **(plans or {})})
        known = {d.device_id for d in self.problem.devices}
        dropped = sorted({d for r in reports for d in r.dropped_device_ids if d in known})
        if not reports or (not set(dropped) & set(plan.device_ids) and len(reports) % self.every_rounds):
            return None
        decision = replan(
            plan,
            history_from_reports(reports, self._plans),
            self.problem,
            removed_device_ids=dropped,
            min_relative_gain=self.min_relative_gain,
            reason_prefix=f"after global round {reports[-1].global_round}: ",
        )
        self.decisions.append(decision)
        if not decision.changed:
            return None
        self._plans[decision.plan.plan_id] = decision.plan
        return decision.plan
