"""The depth and intra_rounds MILP: known answers, brute force, constraints, and every outcome type."""

from __future__ import annotations

import dataclasses
import itertools
import math

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hierfedlora.planner import costs
from hierfedlora.planner.assignment import Assignment, assign_depths_and_rounds, evaluate_assignment
from hierfedlora.planner.assignment.data import build_assignment_data
from hierfedlora.planner.assignment.levels import best_level_solution
from hierfedlora.planner.assignment.milp import build_milp, solve_milp
from hierfedlora.planner.checks import BUDGET_TOLERANCE
from hierfedlora.planner.errors import InfeasibleError, InvalidInputError, NoSolutionError, SolverFailedError
from hierfedlora.planner.outcomes import Grouping, Limit, SolveStatus
from hierfedlora.planner.types import ConvergenceParams, PlanningProblem, SolverOptions
from tests.factories import make_cost_model, make_devices
from tests.planner.cases import CASES, toy_devices, toy_problem

EXACT = SolverOptions(time_limit_s=20.0, relative_gap_tolerance=1e-9, seed=0)


def _grouping(members: list[list[int]] | tuple[tuple[int, ...], ...]) -> Grouping:
    return Grouping(
        members=tuple(tuple(sorted(group)) for group in members),
        objective=0.0,
        bound=0.0,
        status=SolveStatus.OPTIMAL,
        limit=None,
        solve_time_s=0.0,
        method="test",
    )


def _split(num_devices: int, num_groups: int, seed: int) -> Grouping:
    order = np.random.default_rng(seed).permutation(num_devices)
    return _grouping([[int(i) for i in part] for part in np.array_split(order, num_groups)])


def _fleet_problem(num_groups: int, traffic_share: float | None, seed: int = 1) -> tuple[Grouping, PlanningProblem]:
    """Ten devices a group, the toy MiniLM costs; a traffic budget at a share of the unconstrained optimum's."""
    problem = PlanningProblem(devices=make_devices(10 * num_groups, seed=seed), cost_model=make_cost_model())
    grouping = _split(len(problem.devices), num_groups, seed)
    if traffic_share is not None:
        free = assign_depths_and_rounds(grouping, problem)
        problem = dataclasses.replace(problem, traffic_budget_bytes=traffic_share * free.traffic_bytes)
    return grouping, problem


# ---------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_assignment_matches_the_catalogue(case):
    """On the catalogue's grouping, the assignment finds each case's hand-derived optimum."""
    # Arrange
    grouping = case.grouping()
    # Act
    if case.expected_objective is None:
        with pytest.raises(InfeasibleError) as info:
            assign_depths_and_rounds(grouping, case.problem)
        # Assert
        assert info.value.conflicting == case.conflicting
        return
    result = assign_depths_and_rounds(grouping, case.problem)
    # Assert
    assert result.objective_value == pytest.approx(case.expected_objective, rel=1e-9)
    assert list(zip(result.depths, result.intra_rounds, strict=True)) == [
        (group.depth, group.intra_rounds) for group in case.expected_groups
    ]
    assert result.status is SolveStatus.OPTIMAL and result.limit is None
    assert result.dual_bound == pytest.approx(result.objective_value, rel=1e-4)


def test_skewed_groups_take_fewer_intra_rounds():
    """A skewed group gains less from intra-group rounds, so with c * delta large it takes one.

    Two single-device groups, d0 (10, 0) and d1 (0, 10): each has delta = 0.5 and w = 0.5.
    With c = 4, h(2, 0.5) = 2 / (1 + 4 * 0.5) = 2/3 < h(1) = 1, so tau = 2 is slower and
    learns less: both (2, 1) give (5 + 4) / (2 * 0.5) = 9 -> 90 s. With c = 0, h(2) = 2 and
    both (2, 2) give (10 + 4) / 2 = 7 -> 70 s.
    """
    # Arrange
    devices = toy_devices()[:2]
    skewed = toy_problem(devices=devices, num_groups=None, min_group_size=1, max_group_size=None)
    iid_like = dataclasses.replace(skewed, convergence=dataclasses.replace(skewed.convergence, skew_sensitivity=0.0))
    grouping = _grouping([[0], [1]])
    # Act
    with_skew = assign_depths_and_rounds(grouping, skewed)
    without = assign_depths_and_rounds(grouping, iid_like)
    # Assert
    assert (with_skew.intra_rounds, with_skew.objective_value) == ((1, 1), pytest.approx(90.0))
    assert (without.intra_rounds, without.objective_value) == ((2, 2), pytest.approx(70.0))


def test_evaluate_assignment_prices_any_choice():
    """evaluate_assignment gives the catalogue table's value for a choice that is not optimal."""
    # Arrange
    case = CASES[0]
    # Act
    value = evaluate_assignment(case.grouping(), case.problem, depths=(1, 2), intra_rounds=(2, 1))
    # Assert: T = max(6, 5) = 6, t_glob = 4, p = 1/3 + 2/3 = 1 -> 10 * 10 / 1
    assert value == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# Brute force and properties
# ---------------------------------------------------------------------------------------------


def _brute_force(grouping: Grouping, problem: PlanningProblem) -> float | None:
    """The best time to target over every choice per group, priced device by device; None if none fits.

    Budgets count as met within BUDGET_TOLERANCE, as the planner documents.
    """
    cost, batch = problem.cost_model, problem.effective_batch_size
    choices = list(itertools.product(problem.effective_depth_choices, sorted(problem.intra_rounds_choices)))
    best = None
    for combo in itertools.product(choices, repeat=len(grouping.members)):
        depths = tuple(depth for depth, _ in combo)
        rounds = tuple(tau for _, tau in combo)
        groups = [[problem.devices[i] for i in members] for members in grouping.members]
        need = [costs.peak_memory_bytes(cost, depth=d, batch_size=batch) for d in depths]
        if any(n > min(d.memory_bytes for d in group) for n, group in zip(need, groups, strict=True)):
            continue
        if problem.round_budget_s is not None:
            intra = [
                costs.intra_round_time_s(
                    cost,
                    group,
                    depth=d,
                    local_steps=problem.local_steps,
                    batch_size=batch,
                    latency_s=problem.intra_latency_s,
                )
                for group, d in zip(groups, depths, strict=True)
            ]
            global_s = costs.global_aggregation_s(
                cost, depths, backhaul_mbps=problem.backhaul_mbps, latency_s=problem.global_latency_s
            )
            if costs.round_time_s(intra, rounds, global_s) > problem.round_budget_s * (1 + BUDGET_TOLERANCE):
                continue
        traffic = sum(
            costs.group_traffic_bytes(cost, num_devices=len(group), depth=d, intra_rounds=tau)
            for group, d, tau in zip(groups, depths, rounds, strict=True)
        )
        if problem.traffic_budget_bytes is not None and traffic > problem.traffic_budget_bytes * (1 + BUDGET_TOLERANCE):
            continue
        value = evaluate_assignment(grouping, problem, depths, rounds)
        best = value if best is None else min(best, value)
    return best


@st.composite
def small_instances(draw):
    """Up to 4 groups of 1-3 devices, 4-layer costs, random memory, depth and round choices and budgets."""
    num_groups = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, 3)) for _ in range(num_groups)]
    seed = draw(st.integers(0, 10_000))
    # 2 GiB holds every depth, 200 MB depths 1-2, 165 MB depth 1 only (4-layer toy costs)
    memories = [draw(st.sampled_from([2**31, 2**31, 200_000_000, 165_000_000])) for _ in range(sum(sizes))]
    devices = tuple(
        dataclasses.replace(device, memory_bytes=memory)
        for device, memory in zip(make_devices(sum(sizes), seed=seed), memories, strict=True)
    )
    # Depth 1 always, so memory alone rarely rules a group out; 3 x 2 choices: 6**4 combinations at most
    depth_choices = tuple(sorted({1} | draw(st.sets(st.integers(2, 4), min_size=1, max_size=2))))
    intra_rounds_choices = tuple(sorted(draw(st.sets(st.sampled_from([1, 2, 4, 8]), min_size=2, max_size=2))))
    problem = PlanningProblem(
        devices=devices,
        cost_model=make_cost_model(4),
        depth_choices=depth_choices,
        intra_rounds_choices=intra_rounds_choices,
        convergence=ConvergenceParams(skew_sensitivity=draw(st.sampled_from([0.0, 1.0, 4.0]))),
        solver=EXACT,
    )
    members, start = [], 0
    for size in sizes:
        members.append(list(range(start, start + size)))
        start += size
    grouping = _grouping(members)
    # A round budget between the cheapest and the dearest uniform choice; a traffic budget
    # between the least possible traffic and what the optimum without it moves, so it binds.
    cheapest = _round_and_traffic(grouping, problem, min(depth_choices), min(intra_rounds_choices))
    dearest = _round_and_traffic(grouping, problem, max(depth_choices), max(intra_rounds_choices))
    round_share = draw(st.one_of(st.none(), st.floats(-0.1, 1.0)))
    if round_share is not None:
        budget_s = max(1e-3, cheapest[0] + round_share * (dearest[0] - cheapest[0]))
        problem = dataclasses.replace(problem, round_budget_s=budget_s)
    traffic_share = draw(st.one_of(st.floats(0.0, 0.95), st.none()))
    if traffic_share is not None:
        try:
            free = assign_depths_and_rounds(grouping, problem)
        except InfeasibleError:
            return grouping, problem
        budget_bytes = max(1.0, cheapest[1] + traffic_share * (free.traffic_bytes - cheapest[1]))
        problem = dataclasses.replace(problem, traffic_budget_bytes=budget_bytes)
    return grouping, problem


def _round_and_traffic(grouping: Grouping, problem: PlanningProblem, depth: int, tau: int) -> tuple[float, float]:
    """Round time and traffic with every group at (depth, tau)."""
    data = build_assignment_data(grouping, problem)
    result = data.evaluate(np.full(data.num_groups, data.choice_index(depth, tau)))
    return result.round_time_s, result.traffic_bytes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instance=small_instances())
def test_assignment_equals_brute_force(instance):
    """Over every choice per group (up to 4 groups), the solver's optimum is brute force's."""
    # Arrange
    grouping, problem = instance
    best = _brute_force(grouping, problem)
    event(f"{len(grouping.members)} groups")
    # Act
    if best is None:
        event("infeasible")
        with pytest.raises(InfeasibleError) as info:
            assign_depths_and_rounds(grouping, problem)
        # Assert
        assert info.value.conflicting
        return
    result = assign_depths_and_rounds(grouping, problem)
    event(result.method)
    # Assert
    assert result.objective_value == pytest.approx(best, rel=1e-7)
    priced = evaluate_assignment(grouping, problem, result.depths, result.intra_rounds)
    assert priced == pytest.approx(result.objective_value, rel=1e-9)
    assert result.dual_bound <= result.objective_value * (1 + 1e-12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_groups=st.integers(2, 6),
    seed=st.integers(0, 1000),
    round_slack=st.one_of(st.none(), st.floats(1.0, 3.0)),
    traffic_slack=st.one_of(st.none(), st.floats(1.0, 3.0)),
)
def test_every_choice_fits_memory_and_budgets(num_groups, seed, round_slack, traffic_slack):
    """Every group's depth fits its smallest member; the round and the traffic stay within budget."""
    # Arrange
    devices = make_devices(3 * num_groups, seed=seed)
    devices = tuple(
        dataclasses.replace(d, memory_bytes=int(m))
        for d, m in zip(devices, np.random.default_rng(seed).choice([2**31, 170_000_000], len(devices)), strict=True)
    )
    problem = PlanningProblem(devices=devices, cost_model=make_cost_model(), intra_rounds_choices=(1, 2, 4))
    grouping = _split(len(devices), num_groups, seed)
    fastest = assign_depths_and_rounds(
        grouping, dataclasses.replace(problem, depth_choices=(1,), intra_rounds_choices=(1,))
    )
    problem = dataclasses.replace(
        problem,
        round_budget_s=None if round_slack is None else round_slack * fastest.round_time_s,
        traffic_budget_bytes=None if traffic_slack is None else traffic_slack * fastest.traffic_bytes,
    )
    # Act
    result = assign_depths_and_rounds(grouping, problem)
    event(result.method)
    # Assert
    batch = problem.effective_batch_size
    for members, depth in zip(grouping.members, result.depths, strict=True):
        need = costs.peak_memory_bytes(problem.cost_model, depth=depth, batch_size=batch)
        assert need <= min(devices[i].memory_bytes for i in members)
    if problem.round_budget_s is not None:
        assert result.round_time_s <= problem.round_budget_s * (1 + 1e-6)
    if problem.traffic_budget_bytes is not None:
        assert result.traffic_bytes <= problem.traffic_budget_bytes * (1 + 1e-6)


def test_milp_agrees_with_the_level_sweep():
    """Without a traffic budget, Dinkelbach over the MILP and the level sweep reach the same optimum.

    Two exact methods, built independently, must agree; this runs the MILP where the
    production path would stop after the sweep.
    """
    # Arrange
    grouping, problem = _fleet_problem(num_groups=12, traffic_share=None)
    data = build_assignment_data(grouping, problem)
    levels = best_level_solution(
        round_part_s=data.round_part_s,
        progress=data.progress,
        allowed=data.fits,
        choice_depth_idx=data.choice_depth_idx,
        global_by_depth_s=data.global_by_depth_s,
        round_budget_s=None,
    )
    milp = build_milp(data)
    ratio, found = 0.0, None
    # Act: plain Dinkelbach from lambda = 0
    for _ in range(20):
        milp.ratio.value = ratio
        outcome = solve_milp(
            milp.problem, milp.x, EXACT, time_limit_s=20.0, absolute_gap=1e-9, relative_gap=1e-9, size_text=""
        )
        found = np.argmax(outcome.values, axis=1)
        new_ratio = data.evaluate(found).ratio_s
        if new_ratio >= ratio * (1 - 1e-12) and ratio > 0:
            break
        ratio = new_ratio
    # Assert
    assert data.evaluate(found).ratio_s == pytest.approx(levels.ratio_s, rel=1e-9)


def test_traffic_budget_runs_dinkelbach_to_a_proven_optimum():
    """A binding traffic budget is solved by MILPs and proven within the gap tolerance."""
    # Arrange
    grouping, problem = _fleet_problem(num_groups=8, traffic_share=0.6)
    # Act
    result = assign_depths_and_rounds(grouping, problem)
    # Assert
    assert result.method == "dinkelbach" and result.iterations >= 1
    assert result.status is SolveStatus.OPTIMAL
    assert result.relative_gap <= problem.solver.relative_gap_tolerance
    assert result.traffic_bytes <= problem.traffic_budget_bytes * (1 + 1e-6)


def test_ten_thousand_devices_in_a_thousand_groups():
    """The tables build for 10,000 devices in 1,000 groups, and the optimum prices as evaluate_assignment does."""
    # Arrange
    problem = PlanningProblem(devices=make_devices(10_000, seed=3), cost_model=make_cost_model())
    grouping = _split(10_000, 1_000, seed=3)
    # Act
    result = assign_depths_and_rounds(grouping, problem)
    # Assert
    assert (result.status, result.method, len(result.depths)) == (SolveStatus.OPTIMAL, "levels", 1_000)
    priced = evaluate_assignment(grouping, problem, result.depths, result.intra_rounds)
    assert priced == pytest.approx(result.objective_value, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Outcomes and errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "conflicting"),
    [
        ({"round_budget_s": 4.0}, ("round_budget",)),
        ({"traffic_budget_bytes": 7e6}, ("traffic_budget",)),
        ({"devices": toy_devices(memory_bytes=(2**30, 2**30, 1_500_000, 2**30))}, ("memory",)),
        # Both budgets too tight: dropping round_budget leaves traffic infeasible, so the
        # filter keeps the one family that is infeasible alone.
        ({"round_budget_s": 4.0, "traffic_budget_bytes": 7e6}, ("traffic_budget",)),
    ],
    ids=["round_budget", "traffic_budget", "memory", "both_budgets"],
)
def test_infeasible_assignment_names_the_conflict(changes, conflicting):
    """Called directly (no arithmetic checks first), the deletion filter names what conflicts, with numbers."""
    # Arrange
    problem = toy_problem(**changes)
    # Act
    with pytest.raises(InfeasibleError) as info:
        assign_depths_and_rounds(CASES[0].grouping(), problem)
    # Assert
    assert info.value.conflicting == conflicting
    assert info.value.hint
    assert "no depth and intra_rounds for the 2 groups meet" in info.value.reason


def test_round_budget_conflict_states_the_fastest_round():
    """The round-budget conflict says how fast a round can be: both groups at (1, 1), 3 + 2 = 5 s."""
    # Arrange
    problem = toy_problem(round_budget_s=4.0)
    # Act
    with pytest.raises(InfeasibleError) as info:
        assign_depths_and_rounds(CASES[0].grouping(), problem)
    # Assert
    assert info.value.reason == (
        "no depth and intra_rounds for the 2 groups meet round_budget together: "
        "the fastest round these groups allow is 5 s > round_budget_s = 4 s"
    )
    assert info.value.hint == "raise round_budget_s to at least 5 s"


def test_time_limit_keeps_the_incumbent():
    """A time limit hit during the MILP leaves a FEASIBLE assignment with its bound and the TIME limit."""
    # Arrange
    grouping, problem = _fleet_problem(num_groups=50, traffic_share=0.6)
    problem = dataclasses.replace(problem, solver=SolverOptions(time_limit_s=1e-3))
    # Act
    result = assign_depths_and_rounds(grouping, problem)
    # Assert
    assert (result.status, result.limit) == (SolveStatus.FEASIBLE, Limit.TIME)
    assert result.dual_bound <= result.objective_value
    assert result.traffic_bytes <= problem.traffic_budget_bytes * (1 + 1e-6)


def test_no_incumbent_at_the_limit_is_no_solution():
    """An impossible traffic budget that the time limit stops before any MILP runs is a NoSolutionError."""
    # Arrange: 7 MB < the least traffic (8 MB), which only the MILP (not the level sweep) sees
    problem = toy_problem(traffic_budget_bytes=7e6, solver=SolverOptions(time_limit_s=1e-9))
    # Act
    with pytest.raises(NoSolutionError) as info:
        assign_depths_and_rounds(CASES[0].grouping(), problem)
    # Assert
    assert info.value.limit is Limit.TIME
    assert info.value.solve_time_s >= 0


def test_solver_exceptions_become_solver_failed():
    """Whatever cvxpy raises inside a solve reaches the caller as a SolverFailedError, cause kept."""
    # Arrange: a quadratic objective, which HiGHS through cvxpy refuses
    x = cp.Variable(2, boolean=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [cp.sum(x) == 1])
    # Act
    with pytest.raises(SolverFailedError) as info:
        solve_milp(problem, x, EXACT, time_limit_s=1.0, absolute_gap=1e-6, relative_gap=1e-6, size_text="2 binaries")
    # Assert
    assert info.value.solver == "HiGHS (via cvxpy)"
    assert info.value.problem_size == "2 binaries"
    assert isinstance(info.value.__cause__, cp.error.SolverError)


@pytest.mark.parametrize(
    ("members", "path"),
    [
        ([[0, 1], [2]], "grouping.members"),
        ([[0, 1], [1, 2, 3]], "grouping.members[1]"),
        ([[0, 1, 2, 3], []], "grouping.members[1]"),
        ([[0, 1], [2, 9]], "grouping.members[1]"),
    ],
    ids=["missing", "twice", "empty", "out_of_range"],
)
def test_a_grouping_that_is_not_a_partition_is_invalid(members, path):
    """Members must cover every device once; the issue names the group."""
    # Arrange
    grouping = _grouping(members)
    # Act
    with pytest.raises(InvalidInputError) as info:
        assign_depths_and_rounds(grouping, CASES[0].problem)
    # Assert
    assert [issue.path for issue in info.value.issues] == [path]


def test_evaluate_assignment_reports_wrong_lengths():
    """One depth and one intra_rounds per group, or both fields are reported."""
    # Arrange
    case = CASES[0]
    # Act
    with pytest.raises(InvalidInputError) as info:
        evaluate_assignment(case.grouping(), case.problem, depths=(1,), intra_rounds=(0, 1))
    # Assert
    assert [str(issue) for issue in info.value.issues] == [
        "depths must be one depth in 1..2 per group (2); got (1,)",
        "intra_rounds must be one integer >= 1 per group (2); got (0, 1)",
    ]


def test_assignment_is_a_frozen_record():
    """Assignment is immutable and its gap is derived from objective and bound."""
    # Arrange
    result = assign_depths_and_rounds(CASES[0].grouping(), CASES[0].problem)
    # Act
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.depths = (1, 1)  # type: ignore[misc]
    # Assert
    assert isinstance(result, Assignment)
    assert math.isclose(result.relative_gap, 0.0, abs_tol=1e-12)
