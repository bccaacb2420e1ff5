"""Scalable grouping: a dealing start, then batched exchange descent between pairs of groups.

Formulation: :mod:`hierfedlora.planner.grouping`. Work happens on the integer residuals
``r_k = sum_{i in k} E_i`` (``grouping.model``), whose L1 norms are the objective times
``S**2``; moving one device changes two residuals, so a candidate costs O(C).

1. **Start** (:mod:`~hierfedlora.planner.grouping.start`). Group sizes as even as (2) allows.
   Devices are dealt like cards, largest first, one round at a time, each round a min-cost
   assignment of that round's devices to the open groups (exact up to 1,024 groups; beyond, in
   strata of 512 groups that each receive a like mix of devices), so memory and time grow
   linearly with N. If that breaks a speed band (4), the start is the contiguous speed
   segmentation of ``segment_sizes_by_speed`` instead (it meets (2) and (4) whenever any
   assignment does), re-dealt within pools of segments that fit the band together.
2. **Descent** (:mod:`~hierfedlora.planner.grouping.exchange`). Sweeps over matchings of the
   groups (a round-robin tournament up to 128 groups; opposite residuals beyond) evaluate every
   exchange of up to one, then two, devices each way for all matched pairs at once and apply
   the improving ones, while ``(sample violation, objective)`` improves; (2) and (4) are never broken.
3. **Kicks.** Random swaps between two random groups, descent again, kept only if better
   (iterated local search), while work is left.
4. **Bound.** ``grouping.model.lower_bound``: proven, cheap, weak when groups may be large.

Deterministic: the search stops on work (candidate evaluations, :func:`flow_work_budget`), at a
local optimum, or after ``_MAX_FAILED_KICKS`` fruitless kicks, never on the clock, so the same
data and seed give the same grouping on a loaded and an idle host. ``SolverOptions.time_limit_s``
is only a safety cap, checked in every stage (``Limit.TIME`` when it struck). ``threads`` is
ignored (numpy runs the inner loops).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner.errors import NoSolutionError
from hierfedlora.planner.grouping.exchange import TOURNAMENT_MAX_GROUPS, ExchangeSearch, circle_matching
from hierfedlora.planner.grouping.model import (
    GroupingData,
    exact_objective,
    lower_bound,
    segment_sizes_by_speed,
)
from hierfedlora.planner.grouping.search import LocalSearch
from hierfedlora.planner.grouping.start import DeadlineError, deal
from hierfedlora.planner.outcomes import Grouping, Limit, SolveStatus
from hierfedlora.planner.types import SolverOptions

__all__ = ["balanced_sizes", "descend", "flow_work_budget", "solve_flow", "solve_random"]

logger = logging.getLogger(__name__)

_WORK_BUDGET = 300_000_000  # candidate floats for the random baseline's sample repair
_WORK_BASE = 100_000_000  # candidate floats every flow search may spend ...
_WORK_PER_DEVICE = 20_000  # ... plus this much per device: about 100 single-device sweeps at K = N / 10 ...
_WORK_FULL_DEVICES = 50_000  # ... up to this many devices; beyond, each further device adds a tenth of that
_MAX_SWEEPS = 2_000  # sweeps per level
_PATIENCE = 8  # beyond the tournament: a level ends when this many sweeps gain < _MIN_GAIN together
_MIN_GAIN = 1e-4
_MAX_REPEATS = 16  # sweeps of one matching's changed pairs
_MAX_FAILED_KICKS = 60  # kicks in a row that find nothing better end the search
_KICK_SWAPS = 3


def balanced_sizes(data: GroupingData) -> NDArray[np.int64]:
    """Group sizes as even as possible: ``N // K`` or one more (within (2) whenever (2) is feasible)."""
    quotient, extra = divmod(data.num_devices, data.num_groups)
    return np.array([quotient + (k < extra) for k in range(data.num_groups)], dtype=np.int64)


def _banded_start(
    data: GroupingData, rng: np.random.Generator | None = None, *, seed: int = 0, deadline: float = math.inf
) -> NDArray[np.int64]:
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
            group_of[devices] = np.array(pool)[deal(data, devices, sizes, seed=seed, deadline=deadline)]
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


def _outcome(
    search: LocalSearch | ExchangeSearch, data: GroupingData, method: str, started: float, limit: Limit
) -> Grouping:
    elapsed = time.perf_counter() - started
    if search.total_violation() > 0:
        raise NoSolutionError(
            limit,
            elapsed,
            f"{method} grouping of {data.size_text()} found no assignment meeting "
            "min/max_group_samples; grouping_method='cpsat' decides feasibility exactly",
        )
    members = search.grouping_members() if isinstance(search, LocalSearch) else search.members()
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


def flow_work_budget(data: GroupingData) -> int:
    """The search's work budget in candidate floats (deterministic): ``_WORK_BASE`` plus ``_WORK_PER_DEVICE``
    for each of the first ``_WORK_FULL_DEVICES`` devices and a tenth of it for each further one.

    Why less per device at scale: on large fleets the blocked dealing start does nearly all of the
    work. On 100,000 devices (K = 10,000, Dirichlet 0.5 over 26 classes) the start reaches 0.1085
    and the full linear budget (about 270 sweeps, all single-device) only 0.1075, 0.9% lower, at
    four times the start's CPU; the first tenth of that budget gains a sixth of it. The tenth keeps
    a million devices planned in a couple of minutes of CPU.
    """
    full = min(data.num_devices, _WORK_FULL_DEVICES)
    return _WORK_BASE + _WORK_PER_DEVICE * full + (_WORK_PER_DEVICE // 10) * (data.num_devices - full)


def solve_flow(data: GroupingData, options: SolverOptions) -> Grouping:
    """Deal, then improve by batched exchange descent (module docstring). Feasibility checked beforehand.

    The search stops on its work budget (:func:`flow_work_budget`) or at a local optimum, so the same
    data and seed give the same grouping on any host; ``options.time_limit_s`` is a safety cap,
    checked in every stage, after which the best grouping so far is returned with ``Limit.TIME``.

    Raises
    ------
    NoSolutionError
        The search ended with a group outside the sample bounds (3), or the safety cap passed
        before a start was built.
    """
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    try:
        start = deal(data, np.arange(data.num_devices), balanced_sizes(data), seed=options.seed, deadline=deadline)
        if not _meets_speed_band(data, start):
            start = _banded_start(data, seed=options.seed, deadline=deadline)
    except DeadlineError:
        raise NoSolutionError(
            Limit.TIME, time.perf_counter() - started, f"flow grouping of {data.size_text()}: no start built"
        ) from None
    search = ExchangeSearch(data, start, deadline=deadline)
    rng = np.random.default_rng(options.seed)
    try:
        descend(search, rng, flow_work_budget(data))
        limit = Limit.NODE  # it ended on its own: a local optimum or the work budget, no proof
    except DeadlineError:
        limit = Limit.TIME
    return _outcome(search, data, "flow", started, limit)


def descend(search: ExchangeSearch, rng: np.random.Generator, budget: int) -> None:
    """Exchanges of single devices to a local optimum, then of up to two devices a side, within ``budget``.

    Raises
    ------
    DeadlineError
        The safety cap passed; ``search`` holds the best state so far (exchanges only improve).
    """
    if search.data.num_groups == 1:
        return
    for level in (1, 2):
        if not _descend_level(search, rng, level, budget):
            return
    _kick(search, rng, budget)


def _kick(search: ExchangeSearch, rng: np.random.Generator, budget: int) -> None:
    """Iterated local search while work is left: random swaps between two random groups, descent at both
    levels, kept only if better (rolled back otherwise); ``_MAX_FAILED_KICKS`` failures in a row end it."""
    best, failures = search.score(), 0
    while search.work <= budget and failures < _MAX_FAILED_KICKS:
        saved = search.snapshot()
        pair = rng.choice(search.data.num_groups, size=2, replace=False)
        search.random_swaps(rng, int(pair[0]), int(pair[1]), _KICK_SWAPS)
        for level in (1, 2):
            if not _descend_level(search, rng, level, budget):
                break
        score = search.score()
        if score[0] < best[0] or (score[0] == best[0] and score[1] < best[1] - search.tolerance):
            best, failures = score, 0
        else:
            search.restore(saved)
            failures += 1


def _descend_level(search: ExchangeSearch, rng: np.random.Generator, level: int, budget: int) -> bool:
    """Sweeps at one level until a local optimum or a stall; False when the work budget ran out."""
    num_groups = search.data.num_groups
    tournament = num_groups <= TOURNAMENT_MAX_GROUPS
    quiet, history = 0, [search.score()]
    for sweep_idx in range(_MAX_SWEEPS):
        if search.work > budget:
            return False
        if tournament:
            pairs = circle_matching(num_groups, sweep_idx)
        else:
            pairs = _projection_matching(search, rng, sweep_idx)
        changed = _settle(search, pairs, level)
        if tournament:
            quiet = 0 if changed else quiet + 1
            if quiet >= num_groups - 1:  # every pair met and none improved: a local optimum
                return True
            continue
        history.append(search.score())
        if len(history) > _PATIENCE:
            (v_old, c_old), (v_new, c_new) = history[-1 - _PATIENCE], history[-1]
            if v_new == v_old and c_old - c_new <= _MIN_GAIN * c_old:
                return True
    return True


def _settle(search: ExchangeSearch, pairs: NDArray[np.int64], level: int) -> int:
    """Sweep ``pairs``, then again the pairs that changed, until none does; the number of exchanges."""
    total = 0
    for _ in range(_MAX_REPEATS):
        improved = search.sweep(pairs, level)
        if not len(improved):
            break
        total += len(improved)
        pairs = improved
    return total


def _projection_matching(search: ExchangeSearch, rng: np.random.Generator, sweep_idx: int) -> NDArray[np.int64]:
    """Disjoint pairs of groups for a sweep beyond the tournament's size.

    Most sweeps pair *opposite* groups: a group whose residual's largest surplus is class c and
    largest deficit class d meets one with surplus d and deficit c (largest residuals first), the
    rest sorted by their projection on a random direction and paired first with last. Every fourth
    sweep is a random matching; with sample bounds every third pairs the fullest with the emptiest;
    with a speed band or term every fifth pairs speed neighbours.
    """
    num_groups, half = search.data.num_groups, search.data.num_groups // 2
    if sweep_idx % 4 == 3:
        order = rng.permutation(num_groups)
        return np.stack([order[0::2][:half], order[1::2][:half]], axis=1)
    if search.track_speed and sweep_idx % 5 == 4:
        order = np.roll(np.argsort(search.low_of[search.slots].min(axis=1), kind="stable"), -((sweep_idx // 5) % 2))
        return np.stack([order[0::2][:half], order[1::2][:half]], axis=1)
    if search.sample_bounds and sweep_idx % 3 == 2:
        order = np.argsort(search.samples, kind="stable")
        return np.stack([order[:half], order[::-1][:half]], axis=1)
    return _opposite_matching(search.residual, rng)


def _opposite_matching(residual: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.int64]:
    """Pairs of groups with opposite residuals (``_projection_matching``), O(K log K)."""
    num_groups, num_classes = residual.shape
    # each group's surplus class c, and deficit class d chosen at random among its three largest
    deficits = np.argsort(residual, axis=1, kind="stable")[:, :3]
    surplus = np.argmax(residual, axis=1)
    deficit = deficits[np.arange(num_groups), rng.integers(0, min(3, num_classes), size=num_groups)]
    norm = np.abs(residual).sum(axis=1)
    key = surplus * num_classes + deficit
    mirror = deficit * num_classes + surplus
    order = np.lexsort((-norm, key))  # by key, largest residual first
    sorted_key = key[order]
    starts = np.searchsorted(sorted_key, np.arange(num_classes * num_classes))
    ends = np.searchsorted(sorted_key, np.arange(num_classes * num_classes), side="right")
    counts = ends - starts
    rank = np.empty(num_groups, dtype=np.int64)
    rank[order] = np.arange(num_groups) - starts[sorted_key]
    # group g (rank j in its bucket) meets the rank-j group of the mirror bucket, when both buckets hold one
    lower = key < mirror  # each bucket pair once, from its lower key
    partner_exists = lower & (rank < counts[mirror])
    first = np.flatnonzero(partner_exists)
    second = order[starts[mirror[first]] + rank[first]]
    paired = np.zeros(num_groups, dtype=bool)
    paired[first] = paired[second] = True
    rest = np.flatnonzero(~paired)
    rest = rest[np.argsort(residual[rest] @ rng.standard_normal(num_classes), kind="stable")]
    cut = len(rest) // 2
    extra = np.stack([rest[:cut], rest[::-1][:cut]], axis=1)
    return np.concatenate([np.stack([first, second], axis=1), extra])


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
