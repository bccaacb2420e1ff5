"""Every method as a plan: coverage, the depths and intra_rounds each method promises, honest predictions."""

from __future__ import annotations

import dataclasses
import doctest
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hierfedlora.validation.baselines as baselines_module
from hierfedlora.planner import costs
from hierfedlora.planner.errors import InfeasibleError, InvalidInputError
from hierfedlora.planner.io import from_json, to_json
from hierfedlora.planner.outcomes import Plan, SolveStatus
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.skew import label_skew
from hierfedlora.planner.types import PlanningProblem, SolverOptions
from hierfedlora.validation.baselines import (
    METHODS,
    SETTINGS_RULES,
    BaselineSettings,
    describe_method,
    make_method_plan,
)
from tests.factories import make_cost_model, make_devices

NUM_LAYERS = 6


@pytest.fixture
def problem() -> PlanningProblem:
    """Eight seeded non-IID devices of mixed speed and links, two groups, the toy 6-layer model."""
    return PlanningProblem(
        devices=make_devices(8, seed=3),
        cost_model=make_cost_model(NUM_LAYERS),
        num_groups=2,
        solver=SolverOptions(time_limit_s=10.0, seed=0),
    )


def _sent_bytes(cost, group) -> int:
    """(C2) by hand: the listed layers (else depth) at the group's share of the rank, plus the head."""
    layers = group.depth if group.layers is None else len(group.layers)
    share = 1.0 if group.lora_rank is None else group.lora_rank / cost.lora_rank
    return round(layers * cost.adapter_bytes_per_layer * share) + cost.head_bytes


def _independent_round_time_s(plan: Plan, problem: PlanningProblem) -> float:
    """(C7) from the scalar cost formulas (C1), (C3), (C6), device by device (summed along a sequential group's
    chain); bytes as (C2) by hand."""
    cost, by_id = problem.cost_model, {d.device_id: d for d in problem.devices}
    slowest_part_s = 0.0
    for group in plan.groups:
        members = [by_id[device_id] for device_id in group.device_ids]
        bits = 8.0 * _sent_bytes(cost, group)
        each_s = [
            problem.local_steps
            * costs.step_time_s(cost, compute_scale=d.compute_scale, depth=group.depth, batch_size=plan.batch_size)
            + bits / (1e6 * d.uplink_mbps)
            + bits / (1e6 * d.downlink_mbps)
            + problem.intra_latency_s
            for d in members
        ]
        intra_s = sum(each_s) if group.sequential else max(each_s)  # a chain (FedGSP) takes every device in turn
        slowest_part_s = max(slowest_part_s, group.intra_rounds * intra_s)
    largest_bytes = max(_sent_bytes(cost, g) for g in plan.groups)
    return slowest_part_s + 2 * 8.0 * largest_bytes / (1e6 * problem.backhaul_mbps) + problem.global_latency_s


def _independent_rounds_to_target(plan: Plan, problem: PlanningProblem) -> float:
    """(M1)-(M4) by hand: R0 / sum_k w_k (d_k / L)^beta tau_k / (1 + c delta_k (tau_k - 1)).

    ``d_k`` counts the layers a group trains: ``len(layers)`` when it lists them (FedRA).
    """
    params, by_id = problem.convergence, {d.device_id: d for d in problem.devices}
    fleet = np.sum([d.label_counts for d in problem.devices], axis=0)
    progress = 0.0
    for group in plan.groups:
        pooled = np.sum([by_id[device_id].label_counts for device_id in group.device_ids], axis=0)
        tv = 0.5 * np.abs(pooled / pooled.sum() - fleet / fleet.sum()).sum()
        tau = group.intra_rounds
        progress += (
            pooled.sum()
            / fleet.sum()
            * ((group.depth if group.layers is None else len(group.layers)) / NUM_LAYERS) ** params.depth_exponent
            * tau
            / (1 + params.skew_sensitivity * tv * (tau - 1))
        )
    return params.reference_rounds / progress


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_valid_plan_with_honest_predictions(problem, method):
    """Each device once, depths within 1..L and held in memory, skews, round time and time to target recomputed."""
    # Arrange
    by_id = {d.device_id: d for d in problem.devices}
    fleet = np.sum([d.label_counts for d in problem.devices], axis=0)
    # Act
    plan = make_method_plan(method, problem)
    # Assert
    assert sorted(plan.device_ids) == sorted(by_id)
    assert len(plan.device_ids) == len(by_id)
    for group in plan.groups:
        assert 1 <= group.depth <= NUM_LAYERS
        need = costs.peak_memory_bytes(problem.cost_model, depth=group.depth, batch_size=plan.batch_size)
        assert need <= min(by_id[device_id].memory_bytes for device_id in group.device_ids)
        pooled = np.sum([by_id[device_id].label_counts for device_id in group.device_ids], axis=0)
        assert group.label_skew == label_skew(pooled, fleet)
        assert group.local_steps == problem.local_steps
    assert plan.predicted_round_time_s == pytest.approx(_independent_round_time_s(plan, problem), rel=1e-9)
    assert plan.predicted_rounds_to_target == pytest.approx(_independent_rounds_to_target(plan, problem), rel=1e-9)
    assert plan.objective_value == pytest.approx(plan.predicted_round_time_s * plan.predicted_rounds_to_target)
    assert from_json(Plan, to_json(plan)) == plan


@pytest.mark.parametrize("method", [m for m in METHODS if m != "hierfedlora"])
def test_baselines_name_their_method_and_claim_no_gap(problem, method):
    """A baseline's solver field names it, its reason describes it, and a finished plan's bound is its value."""
    # Arrange / Act
    plan = make_method_plan(method, problem)
    # Assert
    assert plan.solver == f"baseline:{method}"
    assert plan.reason
    assert (plan.status, plan.limit) == (SolveStatus.OPTIMAL, None)
    assert plan.relative_gap <= problem.solver.relative_gap_tolerance
    assert plan.seed == problem.solver.seed


def test_fedlora_is_one_group_at_full_depth_without_intra_rounds(problem):
    """FedLoRA: every device in one group, depth L, tau 1; one IID full-depth group needs R0 rounds."""
    # Arrange / Act
    plan = make_method_plan("fedlora", problem)
    # Assert
    assert [(len(g.device_ids), g.depth, g.intra_rounds) for g in plan.groups] == [(8, NUM_LAYERS, 1)]
    assert plan.predicted_rounds_to_target == pytest.approx(problem.convergence.reference_rounds)
    assert plan.dual_bound == plan.objective_value


def test_full_depth_falls_back_to_what_every_device_holds(problem):
    """A device with 200 MB holds depth 2 at most: FedLoRA and the full-depth ablation train depth 2 and say so."""
    # Arrange: depth 2 needs about 197 MB, depth 3 about 232 MB
    devices = (dataclasses.replace(problem.devices[0], memory_bytes=200_000_000), *problem.devices[1:])
    small = dataclasses.replace(problem, devices=devices)
    # Act
    flat = make_method_plan("fedlora", small)
    freq = make_method_plan("grouping_freq", small)
    # Assert
    assert [g.depth for g in flat.groups] == [2]
    assert "deepest every device holds" in flat.reason
    assert {g.depth for g in freq.groups} == {2}
    assert "deepest every device holds" in freq.reason


def test_depth_choices_bound_full_depth(problem):
    """With depth_choices given, full depth is the deepest choice, not the model's layer count."""
    # Arrange
    shallow = dataclasses.replace(problem, depth_choices=(1, 3))
    # Act
    plan = make_method_plan("hierfavg", shallow)
    # Assert
    assert {g.depth for g in plan.groups} == {3}


def test_hierfavg_draws_random_groups_with_uniform_rounds(problem):
    """HierFAVG: every group at depth L with the setting's tau, on random groups unlike the near-IID ones."""
    # Arrange
    options = BaselineSettings(uniform_intra_rounds=4)
    near_iid = make_plan(problem)
    # Act
    plan = make_method_plan("hierfavg", problem, settings=options)
    # Assert
    assert {(g.depth, g.intra_rounds) for g in plan.groups} == {(NUM_LAYERS, 4)}
    assert len(plan.groups) == 2
    assert {g.device_ids for g in plan.groups} != {g.device_ids for g in near_iid.groups}
    assert plan.grouping_objective > near_iid.grouping_objective


def test_hierfavg_groups_follow_the_seed(problem):
    """Another solver seed draws other groups; the same seed draws the same ones."""
    # Arrange
    reseeded = dataclasses.replace(problem, solver=dataclasses.replace(problem.solver, seed=5))
    # Act
    first, again, other = (make_method_plan("hierfavg", p) for p in (problem, problem, reseeded))
    # Assert
    assert first.groups == again.groups
    assert {g.device_ids for g in first.groups} != {g.device_ids for g in other.groups}


def test_ablations_share_the_near_iid_groups_and_fix_their_knob(problem):
    """grouping_only fixes depth L and tau; grouping_freq depth L; grouping_depth tau; all on make_plan's groups."""
    # Arrange
    options = BaselineSettings(uniform_intra_rounds=2)
    near_iid = [g.device_ids for g in make_plan(problem).groups]
    # Act
    only, freq, depth = (
        make_method_plan(m, problem, settings=options) for m in ("grouping_only", "grouping_freq", "grouping_depth")
    )
    # Assert
    for plan in (only, freq, depth):
        assert [g.device_ids for g in plan.groups] == near_iid
    assert {(g.depth, g.intra_rounds) for g in only.groups} == {(NUM_LAYERS, 2)}
    assert {g.depth for g in freq.groups} == {NUM_LAYERS}
    assert {g.intra_rounds for g in depth.groups} == {2}
    # optimising one knob over choices that include grouping_only's value cannot do worse
    assert freq.objective_value <= only.objective_value * (1 + 1e-9)
    assert depth.objective_value <= only.objective_value * (1 + 1e-9)


def test_hierfedlora_is_make_plan_and_beats_the_ablations(problem):
    """hierfedlora is make_plan's plan unchanged, and optimising both knobs ties or beats fixing either."""
    # Arrange
    expected = make_plan(problem)
    # Act
    plans = {
        m: make_method_plan(m, problem) for m in ("hierfedlora", "grouping_only", "grouping_freq", "grouping_depth")
    }
    # Assert
    assert plans["hierfedlora"].plan_id == expected.plan_id
    assert plans["hierfedlora"].solver == expected.solver
    best = plans["hierfedlora"].objective_value
    assert all(best <= plan.objective_value * (1 + 1e-9) for plan in plans.values())


def _legend_problem(tiny_fleet, cost_model) -> PlanningProblem:
    return PlanningProblem(devices=tiny_fleet, cost_model=cost_model, num_groups=2)


def test_legend_gives_slow_devices_shallower_depths(tiny_fleet, cost_model):
    """LEGEND: depth never grows as devices slow down (equal links), tau 1, one group per distinct depth."""
    # Arrange: compute scales 1, 1, 2, 2, 4, 4, 8, 8 with equal links
    problem = _legend_problem(tiny_fleet, cost_model)
    # Act
    plan = make_method_plan("legend", problem)
    # Assert
    depth_of = {device_id: g.depth for g in plan.groups for device_id in g.device_ids}
    depths_by_speed = [depth_of[d.device_id] for d in sorted(tiny_fleet, key=lambda d: d.compute_scale)]
    assert depths_by_speed == sorted(depths_by_speed, reverse=True)
    assert depths_by_speed[0] == NUM_LAYERS  # the fastest devices meet the deadline at full depth
    assert depths_by_speed[-1] < NUM_LAYERS
    assert {g.intra_rounds for g in plan.groups} == {1}
    assert len({g.depth for g in plan.groups}) == len(plan.groups)


def test_legend_deadline_matches_a_hand_computation(tiny_fleet, cost_model):
    """Each device takes the deepest depth whose local round fits T*, the quantile of full-depth rounds."""
    # Arrange
    problem = _legend_problem(tiny_fleet, cost_model)
    quantile = 0.5

    def local_round_s(device, depth):
        step = costs.step_time_s(cost_model, compute_scale=device.compute_scale, depth=depth, batch_size=16)
        return problem.local_steps * step + costs.exchange_time_s(
            cost_model, device, depth=depth, latency_s=problem.intra_latency_s
        )

    deadline_s = float(np.quantile([local_round_s(d, NUM_LAYERS) for d in tiny_fleet], quantile))
    expected = {
        d.device_id: max((k for k in range(1, NUM_LAYERS + 1) if local_round_s(d, k) <= deadline_s), default=1)
        for d in tiny_fleet
    }
    # Act
    plan = make_method_plan("legend", problem, settings=BaselineSettings(legend_deadline_quantile=quantile))
    # Assert
    assert {device_id: g.depth for g in plan.groups for device_id in g.device_ids} == expected
    assert len(set(expected.values())) > 1  # the case separates devices


def test_legend_with_the_slowest_deadline_is_fedlora(tiny_fleet, cost_model):
    """Quantile 1 lets every device train full depth: one group, the same plan as FedLoRA's groups."""
    # Arrange
    problem = _legend_problem(tiny_fleet, cost_model)
    # Act
    legend = make_method_plan("legend", problem, settings=BaselineSettings(legend_deadline_quantile=1.0))
    flat = make_method_plan("fedlora", problem)
    # Assert
    assert legend.groups == flat.groups
    assert legend.objective_value == pytest.approx(flat.objective_value)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_the_same_plan(problem, method):
    """Every method is deterministic for a fixed problem and seed."""
    # Arrange / Act
    first, second = make_method_plan(method, problem), make_method_plan(method, problem)
    # Assert
    assert first.plan_id == second.plan_id
    assert first.groups == second.groups


def test_fixed_constructions_report_the_budgets_they_break(problem):
    """A construction ignores a round budget it cannot know, and its reason says it breaks it."""
    # Arrange
    flat = make_method_plan("fedlora", problem)
    tight = dataclasses.replace(problem, round_budget_s=flat.predicted_round_time_s / 2)
    # Act
    plan = make_method_plan("fedlora", tight)
    # Assert
    assert plan.groups == flat.groups
    assert "breaks round_budget_s" in plan.reason
    assert "breaks" not in flat.reason


def test_a_device_that_holds_no_depth_is_infeasible(problem):
    """Every method needs each device to hold the shallowest depth; the memory conflict is named."""
    # Arrange: depth 1 needs about 162 MB
    devices = (*problem.devices[:-1], dataclasses.replace(problem.devices[-1], memory_bytes=100_000_000))
    broken = dataclasses.replace(problem, devices=devices)
    # Act
    with pytest.raises(InfeasibleError) as info:
        make_method_plan("legend", broken)
    # Assert
    assert info.value.conflicting == ("memory",)
    assert "d7" in info.value.reason


def test_unknown_method_names_the_field_and_the_choices(problem):
    """An unknown method raises InvalidInputError naming 'method', every expected name and the given one."""
    # Arrange / Act
    with pytest.raises(InvalidInputError) as info:
        make_method_plan("fedavg", problem)
    # Assert
    [issue] = info.value.issues
    assert issue.path == "method"
    assert all(repr(name) in issue.expected for name in METHODS)
    assert issue.got == "fedavg"


def test_describe_method_rejects_unknown_names_and_describes_each_method():
    """One distinct line per method; an unknown name raises as make_method_plan does."""
    # Arrange / Act
    lines = [describe_method(m) for m in METHODS]
    with pytest.raises(InvalidInputError) as info:
        describe_method("LEGEND")
    # Assert
    assert len(set(lines)) == len(METHODS)
    assert all(line and "\n" not in line for line in lines)
    assert [issue.path for issue in info.value.issues] == ["method"]


@pytest.mark.parametrize(("field", "bad"), [(f, v) for f, r in SETTINGS_RULES.items() for v in r.bad_values])
def test_settings_report_each_broken_field(field, bad):
    """A bad setting is reported under its field's name, whatever the value."""
    # Arrange / Act
    with pytest.raises(InvalidInputError) as info:
        BaselineSettings(**{field: bad})
    # Assert
    assert [issue.path for issue in info.value.issues] == [field]


@st.composite
def small_problems(draw):
    """4-8 seeded devices, 1-3 groups, random memory (200 MB holds depth 2, 170 MB depth 1 only)."""
    num_devices = draw(st.integers(4, 8))
    devices = make_devices(num_devices, seed=draw(st.integers(0, 1000)))
    memories = [draw(st.sampled_from([2**31, 200_000_000, 170_000_000])) for _ in devices]
    devices = tuple(dataclasses.replace(d, memory_bytes=m) for d, m in zip(devices, memories, strict=True))
    return PlanningProblem(
        devices=devices,
        cost_model=make_cost_model(NUM_LAYERS),
        num_groups=draw(st.integers(1, 3)),
        intra_rounds_choices=(1, 2, 4),
        solver=SolverOptions(time_limit_s=5.0, seed=draw(st.integers(0, 5))),
    )


@pytest.mark.filterwarnings("ignore:num_groups = 1:hierfedlora.planner.errors.HierFedLoraWarning")
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(problem=small_problems(), quantile=st.floats(0.0, 1.0))
def test_every_method_covers_every_device_once(problem, quantile):
    """On random small fleets every method puts each device in exactly one group at a depth it holds."""
    # Arrange
    options = BaselineSettings(legend_deadline_quantile=quantile)
    memory = {d.device_id: d.memory_bytes for d in problem.devices}
    for method in METHODS:
        # Act
        plan = make_method_plan(method, problem, settings=options)
        # Assert
        assert sorted(plan.device_ids) == sorted(memory)
        for group in plan.groups:
            need = costs.peak_memory_bytes(problem.cost_model, depth=group.depth, batch_size=plan.batch_size)
            assert all(need <= memory[device_id] for device_id in group.device_ids)


def test_docstring_examples_run():
    """The module's examples pass."""
    # Arrange / Act
    result = doctest.testmod(baselines_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    # Assert
    assert result.attempted > 0
    assert result.failed == 0


def test_baselines_do_not_import_torch():
    """The baselines are pure planning: importing them loads no torch."""
    # Arrange
    code = "import sys, hierfedlora.validation.baselines; print('torch' in sys.modules)"
    # Act
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Assert
    assert completed.stdout.strip() == "False"
