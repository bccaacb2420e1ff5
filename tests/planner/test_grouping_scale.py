"""The scalable grouping's parts: the stratified dealing start, the batched exchange descent, work-based stopping."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from hierfedlora.planner.errors import NoSolutionError
from hierfedlora.planner.grouping import group_devices
from hierfedlora.planner.grouping.exchange import ExchangeSearch, circle_matching
from hierfedlora.planner.grouping.flow import balanced_sizes
from hierfedlora.planner.grouping.model import exact_objective, grouping_data
from hierfedlora.planner.grouping.start import deal
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.types import PlanningProblem, SolverOptions
from tests.factories import make_cost_model, make_devices


def _problem(num_devices: int, num_classes: int = 6, seed: int = 0, **fields: object) -> PlanningProblem:
    solver = SolverOptions(**fields.pop("solver", {}))  # type: ignore[arg-type]
    return PlanningProblem(
        devices=make_devices(num_devices, num_classes, seed=seed), cost_model=make_cost_model(), solver=solver,
        **fields,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("num_groups", [2, 5, 8, 9])
def test_circle_matchings_meet_every_pair_once(num_groups):
    """K - 1 rounds of the circle method: each round disjoint pairs, every pair of groups exactly once."""
    # Act
    rounds = [circle_matching(num_groups, r) for r in range(num_groups + num_groups % 2 - 1)]
    # Assert
    for pairs in rounds:
        assert len(set(pairs.ravel().tolist())) == 2 * len(pairs)  # disjoint
    met = sorted(tuple(sorted(map(int, p))) for pairs in rounds for p in pairs)
    assert met == list(itertools.combinations(range(num_groups), 2))


@pytest.mark.parametrize("exact_up_to", [1_000, 4])
def test_deal_fills_the_given_sizes(exact_up_to):
    """The start puts every device in one group of exactly its size, with one assignment or in strata."""
    # Arrange
    data = grouping_data(_problem(230, num_groups=23))
    sizes = balanced_sizes(data)
    # Act
    group_of = deal(data, np.arange(data.num_devices), sizes, seed=3, exact_up_to=exact_up_to, block=5)
    # Assert
    assert np.bincount(group_of, minlength=data.num_groups).tolist() == sizes.tolist()


def test_exchange_sweeps_keep_exact_totals_and_the_bounds():
    """After sweeps at both levels (moves included: sizes may differ by 2), the running residuals, samples and
    sizes equal a recount, the score equals the exact objective, the size and speed bounds hold, and the
    objective never rose."""
    # Arrange
    problem = _problem(63, min_group_size=4, max_group_size=9, num_groups=9, max_speed_ratio=8.0,
                       speed_spread_weight=0.01)  # fmt: skip
    data = grouping_data(problem)
    start = deal(data, np.arange(data.num_devices), balanced_sizes(data))
    search = ExchangeSearch(data, start)
    before = search.score()[1]
    # Act
    for level, r in itertools.product((1, 2), range(12)):
        search.sweep(circle_matching(data.num_groups, r), level)
    # Assert
    members = search.members()
    recount = np.zeros_like(search.residual)
    np.add.at(recount, search.group_of, data.excess)
    assert np.array_equal(recount, search.residual)
    assert search.sizes.tolist() == np.bincount(search.group_of, minlength=data.num_groups).tolist()
    assert all(data.min_size <= len(g) <= data.max_size for g in members)
    assert all(data.scales[list(g)].max() <= 8.0 * data.scales[list(g)].min() for g in members)
    assert search.score()[1] / data.total_samples**2 == pytest.approx(exact_objective(data, members), rel=1e-12)
    assert search.score()[1] <= before


def test_the_plan_does_not_depend_on_the_time_cap():
    """Same fleet and seed: a normal and a practically unlimited safety cap give the identical plan, because
    the search stops on its work budget (the wall clock never decides)."""
    # Arrange
    problem = _problem(400, num_classes=10, seed=5, solver={"grouping_method": "flow", "time_limit_s": 30.0})
    unlimited = dataclasses.replace(problem, solver=dataclasses.replace(problem.solver, time_limit_s=1e7))
    # Act
    first, second = make_plan(problem), make_plan(unlimited)
    # Assert
    assert [g.device_ids for g in first.groups] == [g.device_ids for g in second.groups]
    assert first.objective_value == second.objective_value and first.plan_id == second.plan_id


def test_the_safety_cap_stops_the_start():
    """A cap that passes before the start is built is a typed NoSolutionError naming the time limit."""
    # Arrange
    problem = _problem(200, solver={"grouping_method": "flow", "time_limit_s": 1e-9})
    # Act / Assert
    with pytest.raises(NoSolutionError, match="no start"):
        group_devices(problem)


@pytest.mark.parametrize("level", [1, 2])
def test_exchange_costs_are_the_same_all_classes_at_once_and_class_by_class(monkeypatch, level):
    """The one-shot evaluation (small calls) and the class-by-class loop give the same best exchanges, bit for
    bit: the costs are sums of integers held exactly in float64."""
    # Arrange
    from hierfedlora.planner.grouping import exchange

    data = grouping_data(_problem(60, 26, seed=2, num_groups=6))
    start = np.random.default_rng(0).permutation(np.repeat(np.arange(6), balanced_sizes(data)))
    pairs = circle_matching(6, 1)
    table = exchange._bundle_table(ExchangeSearch(data, start).width, level)
    # Act
    monkeypatch.setattr(exchange, "_ONE_SHOT_FLOATS", 1 << 40)
    one_shot = ExchangeSearch(data, start)._best(pairs, table)
    monkeypatch.setattr(exchange, "_ONE_SHOT_FLOATS", 0)
    looped = ExchangeSearch(data, start)._best(pairs, table)
    # Assert
    for a, b in zip(one_shot, looped, strict=True):
        np.testing.assert_array_equal(a, b)
    assert one_shot[2].any()  # a random start leaves improving exchanges to find
