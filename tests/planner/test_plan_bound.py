"""The certified gap's bound: the skew floor holds for every grouping, and the bound is valid and tighter."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from hierfedlora.planner.grouping import group_devices
from hierfedlora.planner.grouping.model import grouping_data, l1_lower_bound, lower_bound
from hierfedlora.planner.outcomes import Grouping, SolveStatus
from hierfedlora.planner.plan import MAX_VERTEX_GROUPS, make_plan, skew_floor, skew_free_bound
from hierfedlora.planner.types import PlanningProblem, SolverOptions
from tests.factories import make_cost_model, make_devices


def _balanced_groupings(num_devices: int, num_groups: int) -> list[tuple[tuple[int, ...], ...]]:
    """Every split of ``0..N-1`` into ``num_groups`` groups of ``N / num_groups`` devices (labels ignored)."""
    size = num_devices // num_groups
    found = set()
    for order in itertools.permutations(range(num_devices)):
        found.add(tuple(sorted(tuple(sorted(order[k * size : (k + 1) * size])) for k in range(num_groups))))
    return sorted(found)


def _weighted_skew(counts: np.ndarray, members: tuple[tuple[int, ...], ...]) -> float:
    """``sum_k w_k delta_k``: each group's sample share times its total variation from the fleet's labels."""
    share = counts.sum(axis=0) / counts.sum()
    total = 0.0
    for group in members:
        pooled = counts[list(group)].sum(axis=0)
        total += pooled.sum() / counts.sum() * 0.5 * np.abs(pooled / pooled.sum() - share).sum()
    return total


@pytest.mark.parametrize("seed", range(4))
def test_skew_floor_holds_for_every_grouping_and_the_l1_bound_is_no_weaker(seed):
    """Over every balanced split of 8 skewed devices into 2 groups, sum_k w_k delta_k >= skew_floor, and the
    superadditive L1 bound is at least the old one (the K largest per-group maxima of LB_i)."""
    # Arrange
    devices = make_devices(8, 5, seed=seed, alpha=0.1)
    problem = PlanningProblem(devices=devices, cost_model=make_cost_model(), num_groups=2)
    counts = np.array([d.label_counts for d in devices], dtype=float)
    groupings = _balanced_groupings(8, 2)
    data = grouping_data(problem)
    any_split = Grouping(members=groupings[0], objective=0.0, bound=0.0, status=SolveStatus.OPTIMAL, limit=None,
                         solve_time_s=0.0, method="manual")  # fmt: skip
    # Act
    floor = skew_floor(problem, any_split)
    least = min(_weighted_skew(counts, members) for members in groupings)
    # Assert
    assert floor <= least + 1e-12
    assert floor > 0  # Dirichlet 0.1 over 5 classes: some device holds more of a class than a group can absorb
    assert lower_bound(data) == pytest.approx(l1_lower_bound(data))  # no speed term
    assert 2 * least >= l1_lower_bound(data) - 1e-12


def test_bound_is_below_the_plan_above_the_skew_free_one_and_tighter_on_skewed_fleets():
    """On 40 devices at Dirichlet 0.1 in 4 random groups: skew-free bound <= floor bound <= the plan's time to target,
    and the floor bound is strictly higher than the bound with skew 0 everywhere."""
    # Arrange
    problem = PlanningProblem(
        devices=make_devices(40, 26, seed=3, alpha=0.1),
        cost_model=make_cost_model(),
        num_groups=4,
        solver=SolverOptions(grouping_method="random", time_limit_s=600.0),
    )
    grouping = group_devices(problem)
    no_skew = dataclasses.replace(problem, convergence=dataclasses.replace(problem.convergence, skew_sensitivity=0.0))
    # Act
    plan = make_plan(problem, grouping=grouping)
    bound = skew_free_bound(grouping, problem)
    skew_free = skew_free_bound(grouping, no_skew)  # c = 0: the skew floor has no effect
    # Assert
    assert 4 <= MAX_VERTEX_GROUPS
    assert plan.dual_bound == pytest.approx(bound)
    assert skew_free < bound <= plan.objective_value
