"""A plan priced under an aggregation rule predicts what the simulated clock charges for it under that rule."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfedlora.planner.assignment import assign_depths_and_rounds
from hierfedlora.planner.errors import InfeasibleError
from hierfedlora.planner.outcomes import Grouping, SolveStatus
from hierfedlora.planner.plan import build_plan, make_plan
from hierfedlora.planner.types import AGGREGATION_RULES, PlanningProblem
from hierfedlora.runtime.clock import global_round_time_s
from tests.factories import make_cost_model, make_devices

DENSE = 1_179_648


def _problem(seed: int, sizes: list[int], rule: str, ingress: float | None, tau_choices: tuple[int, ...]):
    devices = make_devices(sum(sizes), seed=seed)
    return PlanningProblem(
        devices=devices,
        cost_model=dataclasses.replace(make_cost_model(), dense_bytes_per_layer=DENSE),
        depth_choices=(1, 2, 4, 6),
        intra_rounds_choices=tau_choices,
        local_steps=2,
        backhaul_mbps=15.0,
        server_ingress_mbps=ingress,
        intra_latency_s=0.05,
        global_latency_s=0.5,
        aggregation=rule,
    )


def _clock(plan, problem: PlanningProblem):
    return global_round_time_s(
        plan,
        problem.cost_model,
        {d.device_id: d for d in problem.devices},
        backhaul_mbps=problem.backhaul_mbps,
        server_ingress_mbps=problem.server_ingress_mbps,
        intra_latency_s=problem.intra_latency_s,
        global_latency_s=problem.global_latency_s,
        aggregation=plan.aggregation,
        dense_bytes_per_layer=DENSE,
    )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    rule=st.sampled_from(AGGREGATION_RULES),
    ingress=st.sampled_from([None, 10.0, 200.0]),
    tau_choices=st.sampled_from([(1,), (1, 2, 4, 8), (2, 3)]),
)
def test_the_milps_round_time_under_a_rule_is_what_the_clock_charges(seed, sizes, rule, ingress, tau_choices):
    """For random fleets, group sizes, rules and server links, the assignment's chosen plan predicts the clock's
    round, every group's intra round, and the devices' bytes under the same rule."""
    # Arrange
    problem = _problem(seed, sizes, rule, ingress, tau_choices)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    members = tuple(tuple(range(s, s + n)) for s, n in zip(starts, sizes, strict=True))
    grouping = Grouping(
        members=members, objective=0.0, bound=0.0, status=SolveStatus.OPTIMAL, limit=None, solve_time_s=0.0, method="x"
    )
    # Act: the levels solve, then the MILP (Dinkelbach) under a traffic budget that binds
    free = assign_depths_and_rounds(grouping, problem)
    budgeted = dataclasses.replace(problem, traffic_budget_bytes=0.7 * free.traffic_bytes)
    try:
        bound = assign_depths_and_rounds(grouping, budgeted)
    except InfeasibleError:
        bound = None
    # Assert
    for assignment in [free] if bound is None else [free, bound]:
        plan = build_plan(problem, grouping, assignment, solver="test", solve_time_s=0.0)
        timing = _clock(plan, problem)
        assert plan.aggregation == rule
        assert timing.round_s == pytest.approx(plan.predicted_round_time_s, rel=1e-12)
        assert timing.global_aggregation_s == pytest.approx(assignment.global_aggregation_s, rel=1e-12)
        for group, group_timing in zip(plan.groups, timing.groups, strict=True):
            assert group_timing.intra_round_s[0] == pytest.approx(group.predicted_intra_round_s, rel=1e-12)
            assert group_timing.upload_bytes + group_timing.download_bytes == group.predicted_traffic_bytes
        assert timing.upload_bytes + timing.download_bytes == plan.predicted_traffic_bytes == assignment.traffic_bytes
    if bound is not None:
        assert bound.traffic_bytes <= budgeted.traffic_budget_bytes * (1 + 1e-6)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_make_plan_under_each_rule_predicts_the_clock(rule):
    """End to end (grouping, assignment, plan) on eight devices: the noise-free clock under the plan's rule."""
    problem = dataclasses.replace(_problem(3, [4, 4], rule, 40.0, (1, 2, 4)), num_groups=2)
    plan = make_plan(problem)
    timing = _clock(plan, problem)
    assert plan.aggregation == rule
    assert timing.round_s == pytest.approx(plan.predicted_round_time_s, rel=1e-12)
    assert timing.upload_bytes + timing.download_bytes == plan.predicted_traffic_bytes
    fedavg_timing = _clock(dataclasses.replace(plan, aggregation="fedavg"), problem)
    if rule in ("ffa", "fedex", "flora"):  # these rules move other bytes than FedAvg: the clock tells them apart
        assert timing.round_s != fedavg_timing.round_s
