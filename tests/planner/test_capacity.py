"""What capacity depends on: the shared server link (C6), the target, and what a plan carries and saves."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from hierfedlora import planner
from hierfedlora.planner import costs
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.plan_files import load_plan, save_plan
from hierfedlora.planner.refit import refit_convergence
from hierfedlora.planner.types import ConvergenceParams, target_for_loss
from tests.planner.cases import TOY_COST, toy_problem


def test_the_server_link_makes_many_groups_cost_more_than_few():
    """(C6): 800 aggregators queue on a 1 Gbit/s server link, 8 do not; without a limit both cost the same."""
    # Arrange
    one_way_bits = 8.0 * costs.adapter_bytes(TOY_COST, depth=2)  # 16 Mbit
    # Act
    few = costs.global_aggregation_s(TOY_COST, [2] * 8, backhaul_mbps=20.0, latency_s=1.0, server_ingress_mbps=1000.0)
    many = costs.global_aggregation_s(
        TOY_COST, [2] * 800, backhaul_mbps=20.0, latency_s=1.0, server_ingress_mbps=1000.0
    )
    unlimited = costs.global_aggregation_s(TOY_COST, [2] * 800, backhaul_mbps=20.0, latency_s=1.0)
    # Assert
    assert few == pytest.approx(2 * one_way_bits / 20e6 + 1.0)  # each aggregator's own 20 Mbit/s link binds
    assert many == pytest.approx(2 * 800 * one_way_bits / 1000e6 + 1.0)  # 800 transfers share 1000 Mbit/s
    assert unlimited == few


def test_a_plan_on_a_slow_server_link_predicts_longer_rounds_and_the_clock_agrees():
    """make_plan prices the queue on the server link; the runtime clock's formula gives the same round."""
    # Arrange
    fast = toy_problem()
    slow = toy_problem(server_ingress_mbps=4.0)  # 2 aggregators on 4 Mbit/s: 4 s per direction at depth 1
    # Act
    fast_plan, slow_plan = make_plan(fast), make_plan(slow)
    global_s = costs.global_aggregation_s(
        TOY_COST,
        [g.depth for g in slow_plan.groups],
        backhaul_mbps=slow.backhaul_mbps,
        latency_s=slow.global_latency_s,
        server_ingress_mbps=4.0,
    )
    # Assert
    assert slow_plan.objective_value > fast_plan.objective_value
    part_s = max(g.intra_rounds * g.predicted_intra_round_s for g in slow_plan.groups)
    assert slow_plan.predicted_round_time_s == pytest.approx(part_s + global_s)


def test_the_target_scales_rounds_with_the_log_of_the_loss_gap():
    """A 1% loss gap takes twice the rounds of the 10% reference: ln(0.01) / ln(0.1) = 2."""
    # Arrange
    reference = toy_problem()
    tighter = toy_problem(convergence=dataclasses.replace(reference.convergence, target_loss_gap=0.01))
    # Act
    plan, tight_plan = make_plan(reference), make_plan(tighter)
    # Assert
    assert tight_plan.predicted_rounds_to_target == pytest.approx(2 * plan.predicted_rounds_to_target)
    assert tight_plan.objective_value == pytest.approx(2 * plan.objective_value)
    assert "0.01" in tight_plan.target and "0.1 " in plan.target


def test_a_loss_target_in_nats_becomes_its_gap_fraction_and_bad_ones_name_the_field():
    """target_for_loss: 0.5 nats of ln 4 is a gap of 36%; a loss above ln C is refused."""
    # Act / Assert
    assert target_for_loss(0.5, 4) == pytest.approx(0.5 / math.log(4))
    with pytest.raises(InvalidInputError, match="target_loss_nats"):
        target_for_loss(2.0, 4)
    with pytest.raises(InvalidInputError, match="target_loss_gap"):
        ConvergenceParams(target_loss_gap=1.0)


def test_refit_keeps_the_problems_target():
    """The refit fits R0 at the reference gap; the user's target survives it."""
    # Arrange
    problem = toy_problem(convergence=dataclasses.replace(toy_problem().convergence, target_loss_gap=0.05))
    # Act
    fit = refit_convergence([], problem)
    # Assert
    assert fit.params.target_loss_gap == 0.05


def test_a_plan_carries_traffic_and_memory_per_group_and_round_trips_through_a_file(tmp_path):
    """Group traffic is (C8), memory (C4); save_plan/load_plan return the same plan; old files still load."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    path = tmp_path / "sub" / "plan.json"
    # Act
    save_plan(path, plan)
    loaded = load_plan(path)
    old = json.loads(path.read_text())
    for key in ("predicted_traffic_bytes", "predicted_backhaul_bytes", "target"):
        del old[key]
    for group in old["groups"]:
        del group["predicted_traffic_bytes"], group["predicted_peak_memory_bytes"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    # Assert
    assert loaded == plan
    for group in plan.groups:
        assert group.predicted_traffic_bytes == costs.group_traffic_bytes(
            TOY_COST, num_devices=len(group.device_ids), depth=group.depth, intra_rounds=group.intra_rounds
        )
        assert group.predicted_peak_memory_bytes == costs.peak_memory_bytes(TOY_COST, depth=group.depth, batch_size=1)
    assert plan.predicted_traffic_bytes == sum(g.predicted_traffic_bytes for g in plan.groups)
    assert plan.predicted_backhaul_bytes == 2 * sum(costs.adapter_bytes(TOY_COST, depth=g.depth) for g in plan.groups)
    assert load_plan(tmp_path / "old.json").predicted_traffic_bytes == 0


def test_a_broken_plan_file_names_the_field(tmp_path):
    """load_plan of a file with a bad field raises InvalidInputError with its path."""
    # Arrange
    path = tmp_path / "plan.json"
    save_plan(path, make_plan(toy_problem()))
    data = json.loads(path.read_text())
    data["groups"][0]["depth"] = 0
    path.write_text(json.dumps(data))
    # Act / Assert
    with pytest.raises(InvalidInputError, match=r"groups\[0\]\.depth"):
        load_plan(path)


def test_the_entry_points_are_exported_from_the_planner_package():
    """``from hierfedlora.planner import make_plan, make_fleet, read_csv, save_plan, load_plan`` works;
    ``Plan`` is reachable from planner.types; an unknown name is an AttributeError."""
    # Act / Assert
    assert planner.make_plan is make_plan and planner.load_plan is load_plan
    assert {"make_fleet", "read_csv", "read_wordnet", "save_plan"} <= set(planner.__all__)
    from hierfedlora.planner.types import Plan as PlanFromTypes

    assert PlanFromTypes is Plan
    with pytest.raises(AttributeError):
        planner.no_such_thing  # noqa: B018
