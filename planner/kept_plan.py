"""A plan's grouping kept under a changed problem: priced, checked against its constraints, re-assigned.

``planner.feedback.replan`` (F5) keeps the grouping when the fleet is unchanged and the refit
costs do not re-group: :func:`reassigned` re-solves only depths and intra_rounds for it (exact and
deterministic), :func:`time_to_target_s` prices a plan's groups under the refit problem (for the
hysteresis), :func:`broken_constraints` names the families a plan breaks under the refit costs,
and :func:`plan_structure` tells whether a candidate differs from the plan in force at all.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np

from hierfedlora.planner import costs
from hierfedlora.planner.assignment import assign_depths_and_rounds, evaluate_assignment
from hierfedlora.planner.assignment.data import build_assignment_data
from hierfedlora.planner.io import sha256_of
from hierfedlora.planner.outcomes import Grouping, Limit, Plan, SolveStatus
from hierfedlora.planner.plan import devices_sha256, skew_free_bound
from hierfedlora.planner.rule_costs import predicted_backhaul_bytes, predicted_group_traffic_bytes
from hierfedlora.planner.types import PlanningProblem

__all__ = ["broken_constraints", "kept_grouping", "plan_structure", "reassigned", "time_to_target_s"]


def kept_grouping(groups: Sequence[Sequence[str]], problem: PlanningProblem) -> Grouping:
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


def time_to_target_s(plan: Plan, problem: PlanningProblem) -> float:
    """``plan``'s groups on the devices ``problem`` still has, priced by ``evaluate_assignment``."""
    sub = dataclasses.replace(problem, devices=tuple(d for d in problem.devices if d.device_id in plan.device_ids))
    known = {d.device_id for d in sub.devices}
    kept = [(ids, g) for g in plan.groups if (ids := [d for d in g.device_ids if d in known])]
    if not kept:
        return math.nan
    depths, rounds = [g.depth for _, g in kept], [g.intra_rounds for _, g in kept]
    return float(evaluate_assignment(kept_grouping([ids for ids, _ in kept], sub), sub, depths, rounds))


def broken_constraints(plan: Plan, problem: PlanningProblem) -> list[str]:
    """Constraint families ``plan`` (on exactly ``problem``'s devices) breaks under ``problem``'s costs."""
    if any(
        g.depth not in problem.effective_depth_choices or g.intra_rounds not in problem.intra_rounds_choices
        for g in plan.groups
    ):
        return ["choices"]
    data = build_assignment_data(kept_grouping([g.device_ids for g in plan.groups], problem), problem)
    choices = np.array([data.choice_index(g.depth, g.intra_rounds) for g in plan.groups])
    result = data.evaluate(choices)
    broken = [] if data.fits[np.arange(len(choices)), choices].all() else ["memory"]
    if data.round_limit_s is not None and result.round_time_s > data.round_limit_s:
        broken.append("round_budget")
    if data.traffic_limit_bytes is not None and result.traffic_bytes > data.traffic_limit_bytes:
        broken.append("traffic_budget")
    return broken


def reassigned(plan: Plan, problem: PlanningProblem) -> Plan:
    """(F5) ``plan``'s grouping kept, depth and intra_rounds re-assigned under ``problem``."""
    started = time.perf_counter()
    kept = kept_grouping([g.device_ids for g in plan.groups], problem)
    assignment = assign_depths_and_rounds(kept, problem)
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
            predicted_traffic_bytes=predicted_group_traffic_bytes(
                problem,
                num_devices=len(g.device_ids),
                depth=assignment.depths[k],
                intra_rounds=assignment.intra_rounds[k],
            ),
            predicted_peak_memory_bytes=costs.peak_memory_bytes(
                problem.cost_model, depth=assignment.depths[k], batch_size=problem.effective_batch_size
            ),
        )
        for k, g in enumerate(plan.groups)
    )
    return dataclasses.replace(
        plan,
        groups=groups,
        predicted_traffic_bytes=sum(g.predicted_traffic_bytes for g in groups),
        predicted_backhaul_bytes=predicted_backhaul_bytes(problem, assignment.depths),
        target=problem.convergence.describe_target(),
        predicted_round_time_s=assignment.round_time_s,
        predicted_rounds_to_target=assignment.rounds_to_target,
        objective_value=assignment.objective_value,
        dual_bound=skew_free_bound(kept, problem, assignment),
        status=status,
        limit=limit,
        solve_time_s=time.perf_counter() - started,
        seed=problem.solver.seed,
        batch_size=problem.effective_batch_size,
        cost_model_sha256=problem.cost_model.model_sha256 or sha256_of(problem.cost_model),
        fleet_sha256=devices_sha256(problem.devices),
        parent_plan_id=plan.plan_id,
        aggregation=problem.aggregation,
    )


def plan_structure(plan: Plan) -> frozenset[tuple[frozenset[str], int, int, int]]:
    return frozenset((frozenset(g.device_ids), g.depth, g.intra_rounds, g.local_steps) for g in plan.groups)
