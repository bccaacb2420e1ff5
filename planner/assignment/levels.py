"""Exact solution of the assignment without the traffic budget (5), by enumerating levels.

Drop constraint (5) from the formulation in :mod:`hierfedlora.planner.assignment`. Take an
optimal choice ``x*`` with round part ``T* = max_k tau_k t_k(d_k)`` and deepest depth ``D*``.
Replace every group's choice by the one with the largest progress ``p_kc`` among the choices
that fit in memory (2), have ``tau t_k(d) <= T*`` and ``d <= D*``. Nothing got slower or
deeper, so (4) still holds and ``T + t_glob`` did not grow (t_glob grows with depth), while
``sum_k p_k`` did not shrink: the new choice is optimal too. So an optimum is found among the
*level solutions*: for every depth cap ``D`` in the depth choices and every round-time level
``L`` in the set of values ``tau t_k(d)``, every group takes its best progress under the two
caps, and the ratio is ``(L + t_glob(D)) / sum_k best_k``. That bound is never below the
level solution's true ratio and equals it at ``(T*, D*)``, so the smallest bound is the
optimum. The same argument holds for any per-choice value in place of ``p_kc`` and the
difference ``L + t_glob(D) - sum_k best_k`` in place of the ratio.

For one depth cap, sorting the ``K·C`` entries by round time and keeping each group's running
best gives every level's total in one pass: ``O(|D| · K C log(K C))`` in all, milliseconds
for 1,000 groups. With (5) present the ratio optimum is a lower bound (a relaxation), and its
solution is optimal as soon as it also meets (5).

:func:`lagrangian_incumbent` uses the difference form to find good choices that meet (5):
it prices traffic at ``mu`` per budget, solves ``min T + G - sum (lambda p - mu b / Phi) x``
over (1)-(4) exactly, and bisects on ``mu`` for the cheapest price whose solution meets (5).

Examples
--------
>>> import numpy as np
>>> best_level_solution(
...     round_part_s=np.array([[3.0, 6.0], [3.0, 6.0]]), progress=np.array([[0.5, 1.0], [0.5, 1.0]]),
...     allowed=np.ones((2, 2), dtype=bool), choice_depth_idx=np.array([0, 0]),
...     global_by_depth_s=np.array([2.0]), round_budget_s=None).choices.tolist()
[1, 1]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner.assignment.data import AssignmentData

__all__ = ["LevelSolution", "best_level_solution", "lagrangian_incumbent"]

FloatArray = NDArray[np.float64]
_BISECTION_STEPS = 30  # the price to 1e-9 of its bracket
_LAGRANGIAN_ROUNDS = 3  # lambda updates; the first usually lands within a percent


@dataclasses.dataclass(frozen=True, slots=True)
class LevelSolution:
    """The best level solution: one choice column per group, and its ratio ``(T + t_glob) / sum p``."""

    choices: NDArray[np.int64]
    ratio_s: float


def best_level_solution(
    *,
    round_part_s: FloatArray,
    progress: FloatArray,
    allowed: NDArray[np.bool_],
    choice_depth_idx: NDArray[np.int64],
    global_by_depth_s: FloatArray,
    round_budget_s: float | None,
) -> LevelSolution | None:
    """The exact optimum of the ratio objective under (1)-(4), or ``None`` if they admit no choice.

    Parameters
    ----------
    round_part_s, progress : (K, C) arrays
        ``tau t_k(d)`` and ``p_kc`` (positive).
    allowed : (K, C) bool array
        Choices that constraint (2) (memory) leaves.
    choice_depth_idx : (C,) int array
        Index into the sorted depth choices of each column's depth.
    global_by_depth_s : (|D|,) array
        (C6) t_glob when the deepest group has that depth (non-decreasing).
    round_budget_s : float or None
        (4): ``T + t_glob <= round_budget_s``.
    """
    found = _search_levels(
        round_part_s, progress, allowed, choice_depth_idx, global_by_depth_s, round_budget_s, np.divide
    )
    if found is None:
        return None
    rows = np.arange(round_part_s.shape[0])
    choices = found[1]
    total_s = float(round_part_s[rows, choices].max()) + float(global_by_depth_s[choice_depth_idx[choices]].max())
    return LevelSolution(choices=choices, ratio_s=total_s / float(progress[rows, choices].sum()))


def lagrangian_incumbent(data: AssignmentData, *, lower_ratio_s: float) -> LevelSolution | None:
    """Good choices that meet (1)-(5), from pricing traffic; ``None`` if no price yields one.

    Starting from ``lambda = lower_ratio_s``, bisect on the traffic price ``mu`` for the
    smallest price whose exact penalised optimum meets (5), keep it if it is the best so far,
    set ``lambda`` to its ratio and repeat a few times (a Dinkelbach step on the heuristic).
    """
    if data.traffic_budget_bytes is None:
        return None
    traffic = data.traffic_bytes / data.traffic_budget_bytes
    rows = np.arange(data.num_groups)

    def cheapest_under(ratio: float, price: float) -> NDArray[np.int64] | None:
        found = _search_levels(
            data.round_part_s,
            ratio * data.progress - price * traffic,
            data.fits,
            data.choice_depth_idx,
            data.global_by_depth_s,
            data.round_limit_s,
            np.subtract,
        )
        return None if found is None else found[1]

    best: LevelSolution | None = None
    ratio = lower_ratio_s
    for _ in range(_LAGRANGIAN_ROUNDS):
        low, high, feasible = 0.0, 1.0, None
        for _ in range(60):  # find a price high enough; traffic of the optimum falls as it rises
            choices = cheapest_under(ratio, high)
            if choices is None:
                return best
            if traffic[rows, choices].sum() <= 1.0:
                feasible = choices
                break
            low, high = high, 2.0 * high
        if feasible is None:
            return best
        for _ in range(_BISECTION_STEPS):
            middle = 0.5 * (low + high)
            choices = cheapest_under(ratio, middle)
            if choices is not None and traffic[rows, choices].sum() <= 1.0:
                high, feasible = middle, choices
            else:
                low = middle
        if not data.satisfies(feasible):
            return best
        found_ratio = data.evaluate(feasible).ratio_s
        if best is not None and found_ratio >= best.ratio_s * (1 - 1e-12):
            return best
        best = LevelSolution(choices=feasible, ratio_s=found_ratio)
        ratio = found_ratio
    return best


def _search_levels(
    round_part_s: FloatArray,
    values: FloatArray,
    allowed: NDArray[np.bool_],
    choice_depth_idx: NDArray[np.int64],
    global_by_depth_s: FloatArray,
    round_budget_s: float | None,
    score: Callable[[FloatArray, FloatArray], FloatArray],
) -> tuple[float, NDArray[np.int64]] | None:
    """Minimise ``score(L + t_glob(D), sum_k best value_k)`` over depth caps D and levels L."""
    num_groups = round_part_s.shape[0]
    best: tuple[float, int, float] | None = None  # (score, depth cap index, level)
    for cap_idx, global_s in enumerate(global_by_depth_s):
        usable = allowed & (choice_depth_idx <= cap_idx)[None, :]
        if round_budget_s is not None:
            usable &= round_part_s + global_s <= round_budget_s
        if not usable.any(axis=1).all():
            continue
        levels, totals = _level_totals(round_part_s, values, usable, num_groups)
        scores = score(levels + global_s, totals)
        pick = int(np.argmin(scores))
        if best is None or scores[pick] < best[0]:
            best = (float(scores[pick]), cap_idx, float(levels[pick]))
    if best is None or not math.isfinite(best[0]):
        return None
    _, cap_idx, level = best
    usable = allowed & (choice_depth_idx <= cap_idx)[None, :] & (round_part_s <= level)
    # First column among the best values: the shallowest depth, then the fewest rounds.
    return best[0], np.argmax(np.where(usable, values, -np.inf), axis=1)


def _level_totals(
    round_part_s: FloatArray, values: FloatArray, usable: NDArray[np.bool_], num_groups: int
) -> tuple[FloatArray, FloatArray]:
    """Every level at which all groups have a usable choice, and ``sum_k`` of their best value."""
    group_idx, choice_idx = np.nonzero(usable)
    times, gains = round_part_s[group_idx, choice_idx], values[group_idx, choice_idx]
    # Each group's running best value in order of round time. Work on dense integer ranks so
    # a per-group offset makes one cumulative max restart at every group, exactly.
    distinct, ranks = np.unique(gains, return_inverse=True)
    order = np.lexsort((times, group_idx))
    groups_sorted = group_idx[order]
    offset = groups_sorted * (len(distinct) + 1)
    running = np.maximum.accumulate(ranks[order] + offset) - offset
    first = np.concatenate(([True], groups_sorted[1:] != groups_sorted[:-1]))
    before = np.where(first, 0.0, distinct[np.concatenate(([0], running[:-1]))])
    increase = distinct[running] - before  # how much this entry raises its group's best
    # Sweep the levels upwards; a level counts once every group has a choice under it.
    by_time = np.argsort(times[order], kind="stable")
    level_s = times[order][by_time]
    total = np.cumsum(increase[by_time])
    covered = np.cumsum(first[by_time])
    valid = np.concatenate((level_s[1:] != level_s[:-1], [True])) & (covered == num_groups)
    return level_s[valid], total[valid]
