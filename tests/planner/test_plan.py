"""make_plan end to end: the catalogue, provenance, determinism, JSON round-trips, outcomes, the summary."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hierfedlora.planner import costs
from hierfedlora.planner.errors import HierFedLoraWarning, InfeasibleError, InvalidInputError
from hierfedlora.planner.io import from_json, sha256_of, to_json
from hierfedlora.planner.outcomes import Limit, Plan, SolveStatus
from hierfedlora.planner.plan import make_plan, summarize_plan
from hierfedlora.planner.skew import label_skew
from hierfedlora.planner.types import PlanningProblem, SolverOptions
from tests.factories import make_cost_model, make_devices
from tests.planner.cases import CASES, toy_problem


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_make_plan_matches_the_catalogue(case):
    """make_plan finds each case's grouping, depths, intra_rounds and time to target, or its conflict."""
    # Arrange
    problem = case.problem
    # Act
    if case.expected_objective is None:
        with pytest.raises(InfeasibleError) as info:
            make_plan(problem)
        # Assert
        assert info.value.conflicting == case.conflicting
        return
    plan = make_plan(problem)
    # Assert
    assert [(g.device_ids, g.depth, g.intra_rounds) for g in plan.groups] == [
        (g.device_ids, g.depth, g.intra_rounds) for g in case.expected_groups
    ]
    assert plan.objective_value == pytest.approx(case.expected_objective, rel=1e-9)
    assert (plan.status, plan.limit) == (SolveStatus.OPTIMAL, None)


def test_plan_carries_its_provenance():
    """Model, fleet and cost hashes, seed, batch, solver, parent, reason and per-group skews are stamped."""
    # Arrange
    problem = toy_problem(
        cost_model=dataclasses.replace(toy_problem().cost_model, model_sha256=""),
        solver=SolverOptions(seed=7),
    )
    counts = np.array([d.label_counts for d in problem.devices])
    # Act
    plan = make_plan(problem, parent_plan_id="abc123def456", reason="device d9 left")
    # Assert
    assert plan.model_name == "toy-cases"
    assert plan.cost_model_sha256 == sha256_of(problem.cost_model)  # no measured hash: the content's
    assert plan.fleet_sha256 == sha256_of(problem.devices)
    assert (plan.seed, plan.batch_size) == (7, 1)
    assert plan.solver in ("cpsat+highs", "flow+highs")  # "auto" grouping: flow when its bound proves it
    assert (plan.parent_plan_id, plan.reason) == ("abc123def456", "device d9 left")
    assert plan.groups[0].label_skew == label_skew(counts[[0, 1]].sum(axis=0), counts.sum(axis=0))
    assert [g.predicted_intra_round_s for g in plan.groups] == [5.0, 5.0]  # t(2) = 3 + 2
    assert plan.predicted_round_time_s == pytest.approx(14.0)  # 2 * 5 + 2 * 2
    assert plan.predicted_rounds_to_target == pytest.approx(5.0)  # 10 / 2


def test_measured_model_hash_is_kept():
    """A cost model with a measured hash is identified by that hash."""
    # Arrange
    problem = toy_problem()
    # Act
    plan = make_plan(problem)
    # Assert
    assert plan.cost_model_sha256 == "c" * 64


def test_same_seed_gives_the_same_plan():
    """make_plan is deterministic: the same problem and seed give the same plan_id and groups."""
    # Arrange
    problem = PlanningProblem(devices=make_devices(10, seed=4), cost_model=make_cost_model(), num_groups=2)
    # Act
    first, second = make_plan(problem), make_plan(problem)
    # Assert
    assert first.plan_id == second.plan_id
    assert first.groups == second.groups


def test_a_parent_changes_the_plan_id():
    """The parent is part of a plan's identity; the reason and the timing are not."""
    # Arrange
    problem = toy_problem()
    # Act
    plain, child = make_plan(problem), make_plan(problem, parent_plan_id="0" * 12, reason="replan")
    # Assert
    assert plain.plan_id != child.plan_id
    assert dataclasses.replace(child, reason="other", solve_time_s=9.0).plan_id == child.plan_id


@st.composite
def small_problems(draw):
    """4-8 devices in 2 groups, random memory (170 MB holds depth 1 only), an optional round budget."""
    num_devices = draw(st.integers(4, 8))
    seed = draw(st.integers(0, 1000))
    devices = make_devices(num_devices, seed=seed)
    memories = [draw(st.sampled_from([2**31, 200_000_000, 170_000_000])) for _ in devices]
    devices = tuple(dataclasses.replace(d, memory_bytes=m) for d, m in zip(devices, memories, strict=True))
    problem = PlanningProblem(
        devices=devices,
        cost_model=make_cost_model(),
        num_groups=2,
        min_group_size=2,
        intra_rounds_choices=(1, 2, 4),
        solver=SolverOptions(time_limit_s=5.0, seed=draw(st.integers(0, 5))),
    )
    slowest = max(
        problem.local_steps
        * costs.step_time_s(problem.cost_model, compute_scale=d.compute_scale, depth=1, batch_size=16)
        + costs.exchange_time_s(problem.cost_model, d, depth=1, latency_s=problem.intra_latency_s)
        for d in devices
    )
    slack = draw(st.one_of(st.none(), st.floats(1.05, 4.0)))
    round_budget_s = None if slack is None else slack * (slowest + 1.1)
    return dataclasses.replace(problem, round_budget_s=round_budget_s)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_problems())
def test_plans_hold_their_constraints_and_round_trip_through_json(problem):
    """Every device is in one group, every depth fits, the round keeps its budget, JSON loses nothing."""
    # Arrange / Act
    try:
        plan = make_plan(problem)
    except InfeasibleError:
        event("infeasible")
        return
    event("round budget" if problem.round_budget_s else "no budget")
    # Assert
    assert sorted(plan.device_ids) == sorted(d.device_id for d in problem.devices)
    by_id = {d.device_id: d for d in problem.devices}
    for group in plan.groups:
        need = costs.peak_memory_bytes(problem.cost_model, depth=group.depth, batch_size=plan.batch_size)
        assert need <= min(by_id[device_id].memory_bytes for device_id in group.device_ids)
    if problem.round_budget_s is not None:
        assert plan.predicted_round_time_s <= problem.round_budget_s * (1 + 1e-6)
    assert from_json(Plan, to_json(plan)) == plan


def test_a_limit_makes_the_plan_feasible_with_a_warning():
    """A grouping stopped by its time limit gives a FEASIBLE plan, its limit, and a warning at the caller."""
    # Arrange: 40 devices, 4 groups, CP-SAT cannot prove the grouping in 0.2 s
    problem = PlanningProblem(
        devices=make_devices(40, seed=1),
        cost_model=make_cost_model(),
        num_groups=4,
        solver=SolverOptions(time_limit_s=0.2, grouping_method="cpsat"),
    )
    # Act
    with pytest.warns(HierFedLoraWarning, match="limit left a gap open") as record:
        plan = make_plan(problem)
    # Assert
    assert (plan.status, plan.limit) == (SolveStatus.FEASIBLE, Limit.TIME)
    assert record[0].filename == __file__


def test_input_warnings_point_at_the_callers_line():
    """Suspicious input warns once, at the line that called make_plan."""
    # Arrange
    problem = toy_problem(intra_rounds_choices=(1,))
    # Act
    with pytest.warns(HierFedLoraWarning, match="groups never aggregate") as record:
        make_plan(problem)
    # Assert
    assert [w.filename for w in record] == [__file__]


def test_bad_input_fails_before_any_solver():
    """Cross-object issues raise InvalidInputError from make_plan, all at once."""
    # Arrange
    problem = toy_problem(depth_choices=(1, 3), intra_rounds_choices=(2, 2))
    # Act
    with pytest.raises(InvalidInputError) as info:
        make_plan(problem)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["depth_choices", "intra_rounds_choices"]


def test_summary_lists_every_group():
    """The summary shows status and gap, the prediction, a header and one row per group."""
    # Arrange
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = make_plan(toy_problem(), parent_plan_id="feedc0ffee00", reason="device left")
    # Act
    text = summarize_plan(plan)
    # Assert
    lines = text.splitlines()
    assert lines[0].startswith(f"plan {plan.plan_id}   status OPTIMAL   gap 0.00% (grouping 0.00%)")
    assert lines[1] == "parent: feedc0ffee00   reason: device left"
    assert lines[2] == "predicted: 14 s per global round x 5 rounds = 70 s to target (bound 70 s)"
    assert lines[3].startswith("target: eval loss gap 0.1 of the untrained model's")
    # devices: 2 groups x 2 intra-group rounds x 2 devices x (up + down) x 2 MB (depth 2) = 32 MB;
    # backhaul: 2 aggregators x (up + down) x 2 MB = 8 MB; memory: 1 MB frozen + 2 layers x 1 MB adapters
    assert lines[4] == "per global round: devices move 30.5 MiB, the backhaul 7.6 MiB; peak device memory 2.9 MiB"
    lines = lines[:3] + lines[5:]
    assert lines[3].split() == [
        "group",
        "devices",
        "skew",
        "L1",
        "depth",
        "intra_rounds",
        "intra-round",
        "s",
        "group",
        "part",
        "s",
    ]
    assert [line.split() for line in lines[4:]] == [
        ["0", "2", "0.000", "2", "2", "5.000", "10.000"],
        ["1", "2", "0.000", "2", "2", "5.000", "10.000"],
    ]


def test_the_fast_fleet_digest_equals_the_canonical_one():
    """devices_sha256 gives io.sha256_of's digest, tiers and availability windows included."""
    # Arrange
    import dataclasses as dc

    from hierfedlora.planner.io import sha256_of
    from hierfedlora.planner.plan import devices_sha256
    from tests.factories import make_devices

    devices = make_devices(6, 3, seed=1)
    devices = (dc.replace(devices[0], tier="phone", availability=((0.0, 2.5), (4.0, 9.0))), *devices[1:])
    # Act / Assert
    assert devices_sha256(devices) == sha256_of(devices)


def test_the_certified_gap_is_against_the_skew_free_bound():
    """dual_bound is the assignment optimum of the same groups at skew 0: below the objective by the skew's cost;
    with skew_sensitivity 0 it is the objective itself (gap 0); the header prints that gap."""
    # Arrange
    import dataclasses as dc

    from hierfedlora.planner.assignment import assign_depths_and_rounds
    from hierfedlora.planner.outcomes import Grouping, SolveStatus
    from hierfedlora.planner.plan import summarize_plan

    problem = PlanningProblem(devices=make_devices(30, seed=2), cost_model=make_cost_model(), num_groups=3,
                              solver=SolverOptions(grouping_method="flow"))  # fmt: skip
    no_skew = dc.replace(problem, convergence=dc.replace(problem.convergence, skew_sensitivity=0.0))
    # Act
    plan, flat = make_plan(problem), make_plan(no_skew)
    # Assert
    position = {d.device_id: i for i, d in enumerate(problem.devices)}
    grouping = Grouping(members=tuple(tuple(position[i] for i in g.device_ids) for g in plan.groups), objective=0.0,
                        bound=0.0, status=SolveStatus.OPTIMAL, limit=None, solve_time_s=0.0, method="kept")  # fmt: skip
    assert plan.dual_bound == pytest.approx(assign_depths_and_rounds(grouping, no_skew).objective_value, rel=1e-9)
    assert 0 < plan.dual_bound < plan.objective_value
    assert flat.relative_gap == pytest.approx(0.0, abs=1e-9)
    assert f"gap {plan.relative_gap:.2%}" in summarize_plan(plan).splitlines()[0]
    assert "(grouping" not in summarize_plan(plan)  # the flow grouping's own bound certifies nothing


def test_cpsat_gets_its_share_of_the_limit():
    """With grouping_method='cpsat' the flow warm start may use a quarter of the limit; CP-SAT runs on the rest."""
    # Arrange
    problem = PlanningProblem(devices=make_devices(40, seed=1), cost_model=make_cost_model(), num_groups=4,
                              solver=SolverOptions(time_limit_s=1.0, grouping_method="cpsat"))  # fmt: skip
    # Act
    with warnings.catch_warnings():  # CP-SAT may stop at the limit (a warning) or prove its grouping
        warnings.simplefilter("ignore", HierFedLoraWarning)
        plan = make_plan(problem)
    # Assert
    assert plan.solver == "cpsat+highs"
