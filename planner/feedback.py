r"""Feedback: refit the convergence model and device speeds from round reports, and re-plan.

The refits (F1)-(F4) live in :mod:`hierfedlora.planner.refit`; this module re-plans from them, pricing and
re-assigning a kept grouping with :mod:`hierfedlora.planner.kept_plan`.

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
>>> from hierfedlora.planner.types import ConvergenceParams, CostModel, DeviceProfile
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
'the refit (beta 1, c 0.241, R0 10; compute_scale of d0) predicts 16.0% less time to target'
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

from hierfedlora.planner.errors import InfeasibleError, InvalidInputError, Issue, NoSolutionError
from hierfedlora.planner.kept_plan import broken_constraints, plan_structure, reassigned, time_to_target_s
from hierfedlora.planner.outcomes import Plan, RoundReport
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.refit import (
    FIT_BOUNDS,
    LOSS_NOISE_NATS,
    PRIOR_SCALES,
    TARGET_GAP_FRACTION,
    ConvergenceFit,
    History,
    loss_curve,
    plan_progress,
    pooled_refit,
    refit_convergence,
    refit_devices,
    step_time_ratios,
)
from hierfedlora.planner.types import DeviceProfile, PlanningProblem

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
    "pooled_refit",
    "refit_convergence",
    "refit_devices",
    "replan",
    "step_time_ratios",
]

log = logging.getLogger(__name__)


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


def replan(
    plan: Plan,
    history: History,
    problem: PlanningProblem,
    *,
    removed_device_ids: Sequence[str] = (),
    min_relative_gain: float = 0.05,
    reason_prefix: str = "",
    prior_weight: float = 1.0,
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
    prior_weight : float
        Weight of the prior ``problem.convergence`` in the refit (F3): 1 by default; a small weight
        (e.g. 0.01, self-calibration) lets a run's own rounds move the constants far from it.

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
    fit = refit_convergence(history, problem, prior_weight=prior_weight)
    devices = tuple(d for d in refit_devices(problem, history) if d.device_id not in removed)
    refit = dataclasses.replace(problem, devices=devices, convergence=fit.params)
    old_s = time_to_target_s(plan, refit)

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
        return decide(new, reason, (old_s - time_to_target_s(new, refit)) / old_s)
    profiled = {d.device_id: d.compute_scale for d in problem.devices}
    rescaled = [d.device_id for d in devices if d.compute_scale != profiled[d.device_id]]
    try:
        if rescaled and (problem.speed_spread_weight > 0 or problem.max_speed_ratio is not None):
            candidate = make_plan(refit, parent_plan_id=plan.plan_id)
        else:
            candidate = reassigned(plan, refit)
    except (InfeasibleError, NoSolutionError) as err:
        return decide(plan, f"{reason_prefix}no plan meets the constraints under the refit costs, kept ({err})")
    if plan_structure(candidate) == plan_structure(plan):
        return decide(plan, f"{reason_prefix}the refit leaves the best plan unchanged")
    gain = (old_s - time_to_target_s(candidate, refit)) / old_s
    params = fit.params
    fitted = f"beta {params.depth_exponent:.3g}, c {params.skew_sensitivity:.3g}, R0 {params.reference_rounds:.3g}"
    fitted += f"; compute_scale of {', '.join(rescaled)}" if rescaled else ""
    if broken := broken_constraints(plan, refit):
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
    once when the fleet changed under the plan in force:

    - a device of the plan is *gone*: named in ``dropped_device_ids`` by each of the last
      ``absent_rounds`` reports (ids the problem lacks are ignored); gone devices are removed
      from the re-plan, and come back at a later re-plan once they take part again;
    - a group of the plan fell below its minimum size in the last round: fewer devices
      contributed (neither dropped nor rejected) than ``problem.min_group_size`` (or 1).

    ``absent_rounds=1`` treats every drop as a departure; transient dropout calls for more. Its
    answer depends only on its arguments, so a resumed run that asks again gets the same plan;
    ``decisions`` keeps every decision made.

    Raises
    ------
    InvalidInputError
        ``every_rounds`` or ``absent_rounds`` not an integer >= 1, or ``min_relative_gain`` not a
        finite number >= 0.
    """

    def __init__(
        self,
        problem: PlanningProblem,
        *,
        every_rounds: int,
        min_relative_gain: float = 0.05,
        absent_rounds: int = 1,
        prior_weight: float = 1.0,
    ) -> None:
        issues = [
            Issue(name, "an integer >= 1", value)
            for name, value in (("every_rounds", every_rounds), ("absent_rounds", absent_rounds))
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        ]
        if not (
            isinstance(min_relative_gain, int | float) and math.isfinite(min_relative_gain) and min_relative_gain >= 0
        ):
            issues.append(Issue("min_relative_gain", "a finite number >= 0", min_relative_gain))
        if not (isinstance(prior_weight, int | float) and math.isfinite(prior_weight) and prior_weight >= 0):
            issues.append(Issue("prior_weight", "a finite number >= 0", prior_weight))
        if issues:
            raise InvalidInputError(issues)
        self.prior_weight = float(prior_weight)
        self.problem, self.every_rounds, self.min_relative_gain = problem, every_rounds, float(min_relative_gain)
        self.absent_rounds = absent_rounds
        self.decisions: list[ReplanDecision] = []
        self._plans: dict[str, Plan] = {}

    def __call__(
        self, plan: Plan, reports: Sequence[RoundReport], plans: Mapping[str, Plan] | None = None
    ) -> Plan | None:
        """The plan to switch to after ``reports`` (all of the run's, in order), or ``None``.

        ``plans`` maps ids to the plans the run used; plans seen or made before are kept too.
        """
        self._plans.update({plan.plan_id: plan, **(plans or {})})
        if not reports:
            return None
        gone = self._gone(reports)
        short = self._short_groups(plan, reports[-1])
        if not (set(gone) & set(plan.device_ids)) and not short and len(reports) % self.every_rounds:
            return None
        prefix = f"after global round {reports[-1].global_round}: "
        if short:
            prefix += f"groups {', '.join(map(str, short))} below their minimum size; "
        decision = replan(
            plan,
            history_from_reports(reports, self._plans),
            self.problem,
            removed_device_ids=gone,
            min_relative_gain=self.min_relative_gain,
            reason_prefix=prefix,
            prior_weight=self.prior_weight,
        )
        self.decisions.append(decision)
        if not decision.changed:
            return None
        self._plans[decision.plan.plan_id] = decision.plan
        return decision.plan

    def _gone(self, reports: Sequence[RoundReport]) -> list[str]:
        """Devices of the problem dropped by each of the last ``absent_rounds`` reports."""
        if len(reports) < self.absent_rounds:
            return []
        known = {d.device_id for d in self.problem.devices}
        recent = [set(r.dropped_device_ids) & known for r in reports[-self.absent_rounds :]]
        return sorted(set.intersection(*recent))

    def _short_groups(self, plan: Plan, last: RoundReport) -> list[int]:
        """Ids of the plan's groups with fewer contributing devices than the minimum in ``last``."""
        if last.plan_id != plan.plan_id:
            return []
        absent = set(last.dropped_device_ids) | set(last.rejected_device_ids)
        minimum = self.problem.min_group_size or 1
        return [g.group_id for g in plan.groups if len([d for d in g.device_ids if d not in absent]) < minimum]
