"""The planner prices a plan under an aggregation rule (planner.costs (C9)) and chooses depth and tau for it."""

from __future__ import annotations

import dataclasses

import pytest

from hierfedlora.planner import costs
from hierfedlora.planner.assignment import evaluate_assignment
from hierfedlora.planner.checks import check_feasibility, check_problem
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import from_dict, to_dict
from hierfedlora.planner.outcomes import Grouping, Plan, SolveStatus
from hierfedlora.planner.plan import make_plan, summarize_plan
from hierfedlora.planner.types import AGGREGATION_RULES, ConvergenceParams, DeviceProfile, PlanningProblem
from tests.factories import make_cost_model

DENSE = 1_179_648  # the packaged model's: query and value, 384 x 384 float32 each
COUNTS = [(30, 0, 0, 2), (0, 30, 2, 0), (2, 0, 30, 0), (0, 2, 0, 30), (15, 15, 0, 0), (0, 0, 15, 15), (15, 0, 15, 0)]


def slow_problem(rule: str, mbps: float = 5.0) -> PlanningProblem:
    """Eight devices on slow links in two groups of four, a fast backhaul, depth worth its cost (beta 0.5)."""
    devices = tuple(
        DeviceProfile(
            device_id=f"d{i}",
            label_counts=c,
            compute_scale=1.0,
            memory_bytes=2**31,
            uplink_mbps=mbps,
            downlink_mbps=mbps,
        )
        for i, c in enumerate([*COUNTS, (0, 15, 0, 15)])
    )
    return PlanningProblem(
        devices=devices,
        cost_model=dataclasses.replace(make_cost_model(), dense_bytes_per_layer=DENSE),
        num_groups=2,
        local_steps=2,
        backhaul_mbps=1000.0,
        global_latency_s=2.0,
        intra_rounds_choices=(1, 2, 4, 8),
        convergence=ConvergenceParams(depth_exponent=0.5),
        aggregation=rule,
    )


def _grouping(plan: Plan, problem: PlanningProblem) -> Grouping:
    positions = {d.device_id: i for i, d in enumerate(problem.devices)}
    members = tuple(tuple(positions[d] for d in g.device_ids) for g in plan.groups)
    return Grouping(
        members=members, objective=0.0, bound=0.0, status=SolveStatus.OPTIMAL, limit=None, solve_time_s=0.0, method="x"
    )


def test_floras_growing_download_makes_the_planner_train_shallower_than_under_fedavg():
    """On 5 Mbit/s device links FLoRA's download (four stacked adapters) makes each layer dearer: the planner
    trains fewer layers than under FedAvg; FFA-LoRA's halved traffic affords at least as many; and each rule's
    plan is the better one when priced under that rule (the planner optimised what it should)."""
    # Arrange
    problems = {rule: slow_problem(rule) for rule in ("fedavg", "flora", "ffa", "fedex")}
    # Act
    plans = {rule: make_plan(problem) for rule, problem in problems.items()}
    # Assert
    fedavg = plans["fedavg"]
    assert all(plan.aggregation == rule for rule, plan in plans.items())
    assert max(g.depth for g in plans["flora"].groups) < min(g.depth for g in fedavg.groups)
    assert max(g.depth for g in plans["fedex"].groups) < min(g.depth for g in fedavg.groups)
    assert min(g.depth for g in plans["ffa"].groups) >= max(g.depth for g in fedavg.groups)
    for rule, plan in plans.items():
        problem = problems[rule]
        for other in plans.values():  # the other plans' depths and taus, priced under this rule, are no better
            priced = evaluate_assignment(
                _grouping(other, problem),
                problem,
                [g.depth for g in other.groups],
                [g.intra_rounds for g in other.groups],
            )
            assert plan.objective_value <= priced * (1 + 1e-9)
        assert plan.objective_value == pytest.approx(
            evaluate_assignment(
                _grouping(plan, problem), problem, [g.depth for g in plan.groups], [g.intra_rounds for g in plan.groups]
            ),
            rel=1e-9,
        )


def test_the_plan_records_its_rule_and_the_summary_says_it():
    plan = make_plan(slow_problem("flora"))
    assert plan.aggregation == "flora"
    assert "aggregation flora" in summarize_plan(plan).splitlines()[0]
    same = dataclasses.replace(plan, aggregation="fedavg")
    assert same.plan_id != plan.plan_id  # the rule is part of the id (but not when it is FedAvg: see below)


def test_old_plan_json_without_the_rule_loads_as_fedavg_with_the_same_id():
    plan = make_plan(slow_problem("fedavg"))
    data = to_dict(plan)
    del data["aggregation"]
    old = from_dict(Plan, data, source="old plan")
    assert old.aggregation == "fedavg"
    assert old.plan_id == plan.plan_id


def test_plan_traffic_counts_each_rules_bytes():
    """(C8) and (C6b) move the rule's up + down bytes: FLoRA's download stacks the group (and, at the server, K)."""
    problem = slow_problem("flora")
    plan = make_plan(problem)
    cost = problem.cost_model
    for group in plan.groups:
        lora = costs.adapter_bytes(cost, depth=group.depth) - cost.head_bytes
        one_exchange = costs.adapter_bytes(cost, depth=group.depth) + len(group.device_ids) * lora + cost.head_bytes
        assert group.predicted_traffic_bytes == group.intra_rounds * len(group.device_ids) * one_exchange
    k = len(plan.groups)
    assert plan.predicted_backhaul_bytes == sum(
        costs.adapter_bytes(cost, depth=g.depth)
        + k * (costs.adapter_bytes(cost, depth=g.depth) - cost.head_bytes)
        + cost.head_bytes
        for g in plan.groups
    )


def test_an_unknown_rule_is_refused_naming_the_field_and_the_rules():
    with pytest.raises(InvalidInputError) as caught:
        slow_problem("fedprox")
    message = str(caught.value)
    assert message.startswith("aggregation must be one of ")
    assert all(rule in message for rule in AGGREGATION_RULES) and "'fedprox'" in message


def test_fedex_needs_the_cost_models_dense_bytes():
    problem = slow_problem("fedex")
    bare = dataclasses.replace(problem, cost_model=dataclasses.replace(problem.cost_model, dense_bytes_per_layer=None))
    assert [issue.path for issue in check_problem(bare)] == ["cost_model.dense_bytes_per_layer"]
    assert check_problem(problem) == []
    with pytest.raises(InvalidInputError, match=r"cost_model\.dense_bytes_per_layer"):
        make_plan(bare)


def test_the_traffic_lower_bound_follows_the_rule():
    """A budget below FedAvg's least traffic but above FFA-LoRA's halved one is infeasible only under FedAvg."""
    problem = slow_problem("fedavg")
    cost, depth, tau = problem.cost_model, 1, 1
    half = round((costs.adapter_bytes(cost, depth=depth) - cost.head_bytes) / 2) + cost.head_bytes
    least_ffa = tau * len(problem.devices) * 2 * half
    budget = 1.01 * least_ffa
    assert budget < tau * len(problem.devices) * 2 * costs.adapter_bytes(cost, depth=depth)
    fedavg = dataclasses.replace(problem, traffic_budget_bytes=budget)
    ffa = dataclasses.replace(fedavg, aggregation="ffa")
    assert [c.family for c in check_feasibility(fedavg)] == ["traffic_budget"]
    assert check_feasibility(ffa) == []
    plan = make_plan(ffa)
    assert plan.predicted_traffic_bytes <= budget * (1 + 1e-6)
    assert all((g.depth, g.intra_rounds) == (1, 1) for g in plan.groups)
