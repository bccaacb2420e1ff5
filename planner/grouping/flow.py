"""Scalable grouping: dealing by min-cost assignment, then swap/move local search between pairs of groups.

Formulation: :mod:`hierfedlora.planner.grouping`. Work happens on the integer residuals
``r_k = sum_{i in k} E_i`` (``grouping.model``), whose L1 norms are the objective times
``S**2``; moving one device changes two residuals, so a candidate costs O(C).

1. **Start.** Group sizes as even as (2) allows. Devices are dealt like cards: largest
   first, one round at a time, each round giving every group that still has room one
   device by a min-cost assignment (the Hungarian method, a min-cost flow on a bipartite
   graph) whose costs are the exact objective increases. If that breaks a speed band (4),
   the start is the contiguous speed segmentation of ``segment_sizes_by_speed`` instead
   (it meets (2) and (4) whenever any assignment does), re-dealt within pools of
   segments that fit the band together.
2. **Local search** (:mod:`~hierfedlora.planner.grouping.search`). For each group (worst
   first) and a few partners (the groups whose residuals point most opposite, those with
   the most opposite sample slack, speed neighbours, one at random), evaluate every
   exchange of up to two devices each way at once (numpy) and apply the best while it
   improves ``(sample violation, objective)``; (2) and (4) are never broken.
3. **Kicks.** Random swaps between two random groups, local search again, kept only if
   better (iterated local search), within a deterministic work budget.
4. **Bound.** ``grouping.model.lower_bound``: proven, cheap, weak when groups may be large.

Deterministic for ``SolverOptions.seed`` unless the time limit cuts the search short.
``threads`` is ignored (numpy runs the inner loops).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from hierfedlora.planner.errors import NoSolutionError
from hierfedlora.planner.grouping.model import (
    GroupingData,
    exact_objective,
    lower_bound,
    segment_sizes_by_speed,
)
from hierfedlora.planner.grouping.search import LocalSearch
from hierfedlora.planner.outcomes import Grouping, Limit, SolveStatus
from hierfedlora.planner.types import SolverOptions

__all__ = ["balanced_sizes", "solve_flow", "solve_random"]

logger = logging.getLogger(__name__)

_WORK_BUDGET = 300_000_000  # candidate floats for the whole search: about a second or two on a slow core
_MAX_KICKS = 300
_MAX_FAILED_KICKS = 60  # kicks in a row that find nothing better end the search
_KICK_SWAPS = 3


def balanced_sizes(data: GroupingData) -> NDArray[np.int64]:
    """Group sizes as even as possible: ``N // K`` or one more (within (2) whenever (2) is feasible)."""
    quotient, extra = divmod(data.num_devices, data.num_groups)
    return np.array([quotient + (k < extra) for k in range(data.num_groups)], dtype=np.int64)


def _deal(data: GroupingData, devices: NDArray[np.int64], sizes: NDArray[np.int64]) -> NDArray[np.int64]:
    """Deal ``devices`` into groups of ``sizes`` round by round, each round a min-cost assignment.

    Returns each device's group (an index into ``sizes``), aligned with ``devices``.
    """
    excess = data.excess[devices].astype(np.float64)
    scales = data.scales[devices]
    order = np.lexsort((np.arange(len(devices)), -np.abs(excess).sum(axis=1), -data.samples[devices]))
    residual = np.zeros((len(sizes), excess.shape[1]))
    low, high = np.full(len(sizes), np.inf), np.full(len(sizes), -np.inf)
    weight = data.speed_weight * data.total_samples**2 if data.has_speed_term else 0.0
    group_of, position = np.empty(len(devices), dtype=np.int64), 0
    for round_idx in range(int(sizes.max())):
        open_groups = np.flatnonzero(sizes > round_idx)
        dealt = order[position : position + len(open_groups)]
        position += len(open_groups)
        cost = _dealing_cost(residual[open_groups], excess[dealt])
        if weight:
            started = np.isfinite(low[open_groups])
            old = np.zeros(len(open_groups))
            old[started] = np.log(high[open_groups][started]) - np.log(low[open_groups][started])
            new_high = np.maximum(high[open_groups], scales[dealt][:, None])
            new_low = np.minimum(low[open_groups], scales[dealt][:, None])
            cost += weight * (np.log(new_high) - np.log(new_low) - old)
        rows, cols = linear_sum_assignment(cost)
        chosen, groups = dealt[rows], open_groups[cols]
        group_of[chosen] = groups
        residual[groups] += excess[chosen]
        low[groups] = np.minimum(low[groups], scales[chosen])
        high[groups] = np.maximum(high[groups], scales[chosen])
    return group_of


def _dealing_cost(residual: NDArray[np.float64], excess: NDArray[np.float64]) -> NDArray[np.float64]:
    """``cost[i, k] = ||r_k + E_i||_1 - ||r_k||_1``, built one class at a time (in place: fast and small)."""
    cost = np.zeros((len(excess), len(residual)))
    scratch = np.empty_like(cost)
    for c in range(residual.shape[1]):
        np.add(excess[:, c, None], residual[None, :, c], out=scratch)
        np.abs(scratch, out=scratch)
        cost += scratch
    cost -= np.abs(residual).sum(axis=1)[None, :]
    return cost


def _banded_start(data: GroupingData, rng: np.random.Generator | None = None) -> NDArray[np.int64]:
    """A start that meets (2) and (4): the speed segmentation, re-assigned within pools.

    Consecutive segments whose devices together still fit the band form a pool; any
    re-assignment inside a pool keeps the segments' sizes and the band, so each pool is
    dealt like a small fleet, or, given ``rng``, shuffled uniformly into its segments' sizes.
    """
    tie_break = np.zeros(data.num_devices) if rng is None else rng.random(data.num_devices)
    ratio = float(data.max_speed_ratio)  # type: ignore[arg-type]
    segments = segment_sizes_by_speed(data.scales, data.num_groups, data.min_size, data.max_size, ratio, tie_break)
    if segments is None:  # check_feasibility ran first
        raise AssertionError("speed segmentation failed after the feasibility check passed")
    segments.sort(key=lambda segment: (float(data.scales[segment].min()), float(data.scales[segment].max())))
    pools: list[list[int]] = [[0]]
    for k in range(1, len(segments)):
        members = [i for g in pools[-1] + [k] for i in segments[g]]
        if data.scales[members].max() <= ratio * data.scales[members].min():
            pools[-1].append(k)
        else:
            pools.append([k])
    group_of = np.empty(data.num_devices, dtype=np.int64)
    for pool in pools:
        devices = np.array([i for g in pool for i in segments[g]], dtype=np.int64)
        sizes = np.array([len(segments[g]) for g in pool], dtype=np.int64)
        if rng is None:
            group_of[devices] = np.array(pool)[_deal(data, devices, sizes)]
        else:
            group_of[rng.permutation(devices)] = np.repeat(np.array(pool), sizes)
    return group_of


def _meets_speed_band(data: GroupingData, group_of: NDArray[np.int64]) -> bool:
    """Whether every group of ``group_of`` meets (4) (true when no band is set)."""
    if data.max_speed_ratio is None:
        return True
    fastest = np.full(data.num_groups, np.inf)
    slowest = np.zeros(data.num_groups)
    np.minimum.at(fastest, group_of, data.scales)
    np.maximum.at(slowest, group_of, data.scales)
    return bool(np.all(slowest <= data.max_speed_ratio * fastest))


def _outcome(search: LocalSearch, data: GroupingData, method: str, started: float, limit: Limit) -> Grouping:
    elapsed = time.perf_counter() - started
    if search.total_violation() > 0:
        raise NoSolutionError(
            limit,
            elapsed,
            f"{method} grouping of {data.size_text()} found no assignment meeting "
            "min/max_group_samples; grouping_method='cpsat' decides feasibility exactly",
        )
    members = search.grouping_members()
    objective = exact_objective(data, members)
    bound = objective if data.num_groups == 1 else min(lower_bound(data), objective)
    optimal = bound >= objective
    logger.info(
        "%s grouping: objective %.6g, bound %.6g in %.3f s (%s)", method, objective, bound, elapsed, data.size_text()
    )
    return Grouping(
        members=members,
        objective=objective,
        bound=bound,
        status=SolveStatus.OPTIMAL if optimal else SolveStatus.FEASIBLE,
        limit=None if optimal else limit,
        solve_time_s=elapsed,
        method=method,
    )


def solve_flow(data: GroupingData, options: SolverOptions) -> Grouping:
    """Deal, then improve by local search (module docstring). Feasibility checked beforehand.

    Raises
    ------
    NoSolutionError
        The search ended with a group outside the sample bounds (3).
    """
    started = time.perf_counter()
    rng = np.random.default_rng(options.seed)
    start = _deal(data, np.arange(data.num_devices), balanced_sizes(data))
    if not _meets_speed_band(data, start):
        start = _banded_start(data)
    deadline = started + options.time_limit_s
    search = _iterated_search(data, start, rng, deadline)
    # A local optimum carries no proof: FEASIBLE, with TIME when the clock cut the search short
    # and NODE when it ended on its own work budget (more time would not have been used).
    limit = Limit.TIME if time.perf_counter() > deadline else Limit.NODE
    return _outcome(search, data, "flow", started, limit)


def _descend(
    search: LocalSearch, rng: np.random.Generator, limits: tuple[float, int], focus: set[int] | None = None
) -> bool:
    """Single-device exchanges to a local optimum, then bundles of two; False if a limit struck."""
    return search.run(rng, limits, 1, focus) and search.run(rng, limits, 2, focus)


def _iterated_search(
    data: GroupingData, start: NDArray[np.int64], rng: np.random.Generator, deadline: float
) -> LocalSearch:
    """Local search, then kicks (random swaps between two groups) each followed by local search.

    A kicked solution is kept only if it beats the best so far, otherwise rolled back.
    Effort is bounded by a work budget (candidate evaluations, ``_WORK_BUDGET``), at most
    ``_MAX_KICKS`` kicks and ``_MAX_FAILED_KICKS`` failures in a row, not by time, so
    results depend on the seed only, unless the deadline strikes first.
    """
    search = LocalSearch(data, start, use_cost=True)
    limits = (deadline, _WORK_BUDGET)
    if not _descend(search, rng, limits) or data.num_groups == 1:
        return search
    best_score, failures = search.score(), 0
    for _ in range(_MAX_KICKS):
        if time.perf_counter() > deadline or search.work > _WORK_BUDGET or failures >= _MAX_FAILED_KICKS:
            break
        mark = search.checkpoint()
        pair = rng.choice(data.num_groups, size=2, replace=False)
        among = np.concatenate([search.members[pair[0]], search.members[pair[1]]]).astype(np.int64)
        _random_swaps(search, rng, _KICK_SWAPS, among)
        _descend(search, rng, limits, {int(pair[0]), int(pair[1])})
        score = search.score()
        if score[0] < best_score[0] or (score[0] == best_score[0] and score[1] < best_score[1] - search.tolerance):
            best_score, failures = score, 0
        else:
            search.rollback(mark)
            failures += 1
    return search


def solve_random(data: GroupingData, seed: int, time_limit_s: float) -> Grouping:
    """A uniformly random assignment with balanced sizes, repaired for (3) and (4) when they are set.

    Devices are shuffled into :func:`balanced_sizes` (uniform over assignments with those
    sizes). If that breaks a speed band, devices are instead shuffled within pools of the
    speed segmentation (ties in scale broken at random), followed by ``2 N`` random swaps
    that keep every constraint. Sample bounds are repaired by objective-blind local search
    (within ``time_limit_s`` seconds).
    Reported with ``Limit.NODE``: the search stops after one sample by design.

    Raises
    ------
    NoSolutionError
        The repair left a group outside the sample bounds (3).
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    start = np.empty(data.num_devices, dtype=np.int64)
    start[rng.permutation(data.num_devices)] = np.repeat(np.arange(data.num_groups), balanced_sizes(data))
    banded = not _meets_speed_band(data, start)
    if banded:
        start = _banded_start(data, rng)
    search = LocalSearch(data, start, use_cost=False)
    if banded:
        _random_swaps(search, rng, 2 * data.num_devices)
    if search.total_violation() > 0:
        search.run(rng, (started + time_limit_s, _WORK_BUDGET))
    return _outcome(search, data, "random", started, Limit.NODE)


def _random_swaps(
    search: LocalSearch, rng: np.random.Generator, attempts: int, among: NDArray[np.int64] | None = None
) -> None:
    """Swap random pairs of devices (from ``among``, default all) when (3) gets no worse and (4) holds."""
    data = search.data
    ratio = float(data.max_speed_ratio) if data.max_speed_ratio is not None else math.inf
    pool = np.arange(data.num_devices) if among is None else among
    for i, j in pool[rng.integers(len(pool), size=(attempts, 2))]:
        a, b = int(search.group_of[i]), int(search.group_of[j])
        if a == b:
            continue
        fits = True
        for group, out, into in ((a, i, j), (b, j, i)):
            scales = [data.scales[m] for m in search.members[group] if m != out] + [data.scales[into]]
            fits &= max(scales) <= ratio * min(scales)
        moved = data.samples[j] - data.samples[i]
        after = search.violation(search.samples[[a, b]] + np.array([moved, -moved])).sum()
        if fits and after <= search.violation(search.samples[[a, b]]).sum():
            search.move(int(i), b)
            search.move(int(j), a)
