"""What both grouping solvers share: the data, the exact objective, lower bounds, feasibility arithmetic.

The formulation lives in :mod:`hierfedlora.planner.grouping`; symbols here are the same:
``N`` devices ``i``, ``K`` groups ``k``, ``C`` classes ``c``, ``n_ic`` label counts, ``S_i``
samples, ``N_c`` the fleet's samples of class ``c``, ``S`` all samples, ``P_c = N_c / S``.

The L1 part of the objective is kept in *integer* units: with the device excess
``E_ic = S * n_ic - N_c * S_i``, a group's residual ``r_kc = sum_{i in k} E_ic`` equals
``S * n_kc - N_c * S_k``, so ``(1 / S) sum_kc |n_kc - P_c S_k| = sum_kc |r_kc| / S**2`` exactly.

Examples
--------
>>> segment_sizes_by_speed([1.0, 1.0, 4.0, 4.0], num_groups=2, min_size=1, max_size=4, ratio=2.0)
[[0, 1], [2, 3]]
>>> segment_sizes_by_speed([1.0, 4.0, 16.0], num_groups=2, min_size=1, max_size=3, ratio=2.0) is None
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner.errors import InfeasibleError, InvalidInputError, Issue
from hierfedlora.planner.types import PlanningProblem

__all__ = [
    "FAMILY_NUM_GROUPS",
    "FAMILY_SAMPLES",
    "FAMILY_SIZES",
    "FAMILY_SPEED_BAND",
    "GroupingData",
    "check_feasibility",
    "exact_objective",
    "grouping_data",
    "l1_lower_bound",
    "lower_bound",
    "resolve_num_groups",
    "segment_sizes_by_speed",
]

# Constraint families, as named in InfeasibleError.conflicting.
FAMILY_NUM_GROUPS = "num_groups"  # K non-empty groups; never dropped
FAMILY_SIZES = "group_sizes"  # (2)
FAMILY_SAMPLES = "group_samples"  # (3)
FAMILY_SPEED_BAND = "speed_band"  # (4)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupingData:
    """The grouping problem as arrays, checked once (module docstring for the symbols).

    ``max_size`` is ``N`` when unbounded, ``min_samples`` 0 when unset, ``max_samples``
    ``None`` when unset. Arrays are read-only by convention.
    """

    num_devices: int
    num_groups: int
    counts: NDArray[np.int64]  # (N, C) n_ic
    samples: NDArray[np.int64]  # (N,) S_i
    class_totals: NDArray[np.int64]  # (C,) N_c
    total_samples: int  # S
    excess: NDArray[np.int64]  # (N, C) E_ic = S n_ic - N_c S_i
    scales: NDArray[np.float64]  # (N,) compute_scale
    device_ids: tuple[str, ...]
    min_size: int
    max_size: int
    min_samples: int
    max_samples: int | None
    max_speed_ratio: float | None
    speed_weight: float

    @property
    def has_speed_term(self) -> bool:
        """True when the speed-spread term can be non-zero (a weight and two speeds)."""
        return self.speed_weight > 0 and float(self.scales.min()) < float(self.scales.max())

    def size_text(self) -> str:
        """``"N devices, K groups, C classes"`` for error messages."""
        return f"{self.num_devices} devices, {self.num_groups} groups, {self.counts.shape[1]} classes"


def resolve_num_groups(problem: PlanningProblem) -> int:
    """The number of groups K: ``problem.num_groups``, or ``max(1, round(N / 10))`` moved into the size bounds.

    Raises
    ------
    InfeasibleError
        When ``num_groups`` is ``None`` and no K satisfies ``K * min_group_size <= N <= K * max_group_size``.
    """
    num_devices = len(problem.devices)
    if problem.num_groups is not None:
        return problem.num_groups
    fewest = 1 if problem.max_group_size is None else -(-num_devices // problem.max_group_size)
    most = num_devices // (problem.min_group_size or 1)
    if fewest > most:
        raise InfeasibleError(
            f"no number of groups fits {num_devices} devices with min_group_size = {problem.min_group_size} "
            f"and max_group_size = {problem.max_group_size}",
            (FAMILY_SIZES,),
            hint="widen the group size bounds",
        )
    return min(max(max(1, round(num_devices / 10)), fewest), most)


def size_bounds(problem: PlanningProblem, num_groups: int) -> tuple[int, int]:
    """Effective devices-per-group bounds: balanced ``floor(N/K)..ceil(N/K)`` when neither is set."""
    num_devices = len(problem.devices)
    if problem.min_group_size is None and problem.max_group_size is None:
        return num_devices // max(num_groups, 1), -(-num_devices // max(num_groups, 1))
    lowest = problem.min_group_size or 1
    highest = num_devices if problem.max_group_size is None else min(problem.max_group_size, num_devices)
    return lowest, highest


def grouping_data(problem: PlanningProblem, *, num_groups: int | None = None) -> GroupingData:
    """Turn ``problem`` into :class:`GroupingData` (label counts stacked, K resolved unless ``num_groups`` is given).

    Raises
    ------
    InvalidInputError
        When devices disagree on the number of classes.
    InfeasibleError
        From :func:`resolve_num_groups`.
    """
    num_classes = len(problem.devices[0].label_counts)
    issues = [
        Issue(f"devices[{idx}].label_counts", f"{num_classes} counts (one per class, as devices[0])", d.label_counts)
        for idx, d in enumerate(problem.devices)
        if len(d.label_counts) != num_classes
    ]
    if issues:
        raise InvalidInputError(issues)
    counts = np.array([d.label_counts for d in problem.devices], dtype=np.int64)
    samples = counts.sum(axis=1)
    class_totals = counts.sum(axis=0)
    total = int(samples.sum())
    num_devices = len(problem.devices)
    resolved_groups = resolve_num_groups(problem) if num_groups is None else num_groups
    min_size, max_size = size_bounds(problem, resolved_groups)
    return GroupingData(
        num_devices=num_devices,
        num_groups=resolved_groups,
        counts=counts,
        samples=samples,
        class_totals=class_totals,
        total_samples=total,
        excess=total * counts - np.outer(samples, class_totals),
        scales=np.array([d.compute_scale for d in problem.devices], dtype=np.float64),
        device_ids=tuple(d.device_id for d in problem.devices),
        min_size=min_size,
        max_size=max_size,
        min_samples=problem.min_group_samples or 0,
        max_samples=problem.max_group_samples,
        max_speed_ratio=problem.max_speed_ratio,
        speed_weight=problem.speed_spread_weight,
    )


def exact_objective(data: GroupingData, members: Sequence[Sequence[int]]) -> float:
    """The objective of an assignment, L1 part in exact integers (module docstring)."""
    l1_scaled = 0
    spread = 0.0
    for group in members:
        if len(group) == 0:
            continue
        idx = np.asarray(group, dtype=np.int64)
        l1_scaled += int(np.abs(data.excess[idx].sum(axis=0)).sum())
        if data.speed_weight > 0:
            spread += math.log(float(data.scales[idx].max())) - math.log(float(data.scales[idx].min()))
    return l1_scaled / data.total_samples**2 + data.speed_weight * spread


def l1_lower_bound(data: GroupingData) -> float:
    """A proven lower bound on the objective's L1 part, ``sum_k (S_k / S) L1_k``, over every feasible
    assignment, cheap to compute (the "containment" bound).

    Let ``B_i`` bound the samples of any group holding device ``i``: ``max_group_samples``;
    ``S_i`` plus the ``M - 1`` largest ``S_j`` (``M`` the largest possible group size); and ``S``
    minus the samples the other ``K - 1`` groups must hold. For such a group ``G`` the residual
    ``r_Gc = S n_Gc - N_c S_G`` sums to zero over ``c``, so ``||r_G||_1 = 2 sum_c max(0, r_Gc)``.
    With ``t = N_c S_G >= 0``, ``max(0, x - t)`` is
    superadditive over non-negative parts (``max(0, a + b - t) >= max(0, a - t) + max(0, b - t)``),
    so ``max(0, r_Gc) >= sum_{i in G} max(0, S n_ic - N_c S_G)``, and ``S_G <= B_i`` gives
    ``||r_G||_1 >= sum_{i in G} LB_i`` with ``LB_i := 2 sum_c max(0, S n_ic - N_c B_i)``: the part
    of device i's labels beyond what any group holding it can absorb. Summed over the groups, the
    L1 part is at least ``sum_i LB_i / S**2``, whatever the grouping (it was the K group maxima of
    ``LB_i`` before 2026-12-06, a weaker bound). Strong when devices hold few classes (Dirichlet
    alpha 0.1), near 0 for IID fleets.
    """
    num_devices, num_groups, total = data.num_devices, data.num_groups, data.total_samples
    largest_group = min(data.max_size, num_devices - (num_groups - 1) * data.min_size)
    by_size = np.sort(data.samples)
    descending = by_size[::-1]
    others_hold = max(int(by_size[: (num_groups - 1) * data.min_size].sum()), (num_groups - 1) * data.min_samples)
    cap = min(total - others_hold, data.max_samples if data.max_samples is not None else total)
    group_cap = np.minimum(data.samples + int(descending[: max(largest_group - 1, 0)].sum()), cap)
    device_lb = 2 * np.maximum(0, total * data.counts - np.outer(group_cap, data.class_totals)).sum(axis=1)
    return int(device_lb.sum()) / total**2  # every device's LB_i counts, in whichever group it sits


def lower_bound(data: GroupingData) -> float:
    """A proven lower bound on the objective over every feasible assignment: :func:`l1_lower_bound` plus
    the speed part.

    Speed part. The K intervals ``[log min_k, log max_k]`` cover every device's log scale;
    their union leaves uncovered at most ``K - 1`` gaps between consecutive distinct log
    scales, so ``sum_k spread_k >= (log max - log min) - (sum of the K - 1 widest gaps)``.
    Both parts are non-negative, so their sum bounds the objective.
    """
    bound = l1_lower_bound(data)
    num_groups = data.num_groups
    if data.speed_weight > 0:
        logs = np.unique(np.log(data.scales))
        gaps = np.sort(np.diff(logs))[::-1]
        spread_bound = float(logs[-1] - logs[0]) - float(gaps[: num_groups - 1].sum())
        bound += data.speed_weight * max(0.0, spread_bound)
    return bound


def check_feasibility(data: GroupingData) -> None:
    """Arithmetic that proves infeasibility before any solver runs, with the numbers.

    Exact for the families (2) sizes and (4) speed band together (the speed-band test is
    the segmentation of :func:`segment_sizes_by_speed`); only necessary for (3) samples.

    Raises
    ------
    InfeasibleError
        Naming the conflicting families.
    """
    n, k, a, b = data.num_devices, data.num_groups, data.min_size, data.max_size
    if k > n:
        raise InfeasibleError(
            f"num_groups = {k} > {n} devices (every group needs a device)",
            (FAMILY_NUM_GROUPS,),
            hint="lower num_groups",
        )
    if k * a > n:
        raise InfeasibleError(
            f"min_group_size * num_groups = {a} * {k} = {k * a} > {n} devices",
            (FAMILY_SIZES,),
            hint="lower min_group_size or num_groups",
        )
    if k * b < n:
        raise InfeasibleError(
            f"max_group_size * num_groups = {b} * {k} = {k * b} < {n} devices",
            (FAMILY_SIZES,),
            hint="raise max_group_size or num_groups",
        )
    _check_samples(data)
    ratio = data.max_speed_ratio
    if ratio is None or segment_sizes_by_speed(data.scales, k, a, b, ratio) is not None:
        return
    if segment_sizes_by_speed(data.scales, k, 1, n, ratio) is None:
        raise InfeasibleError(
            f"{k} groups with slowest/fastest compute_scale <= {ratio} cannot hold compute scales "
            f"from {data.scales.min():g} to {data.scales.max():g}",
            (FAMILY_SPEED_BAND,),
            hint="raise max_speed_ratio or num_groups",
        )
    raise InfeasibleError(
        f"no {k} groups of {a}..{b} devices keep slowest/fastest compute_scale <= {ratio}",
        (FAMILY_SIZES, FAMILY_SPEED_BAND),
        hint="raise max_speed_ratio or widen the size bounds",
    )


def _check_samples(data: GroupingData) -> None:
    k, total, low, high = data.num_groups, data.total_samples, data.min_samples, data.max_samples
    hint = "widen min_group_samples / max_group_samples"
    if high is not None and low > high:
        raise InfeasibleError(f"min_group_samples = {low} > max_group_samples = {high}", (FAMILY_SAMPLES,), hint=hint)
    if k * low > total:
        raise InfeasibleError(
            f"min_group_samples * num_groups = {low} * {k} = {k * low} > {total} samples", (FAMILY_SAMPLES,), hint=hint
        )
    if high is None:
        most = int(np.sort(data.samples)[::-1][: data.max_size].sum())
        if most < low:
            raise InfeasibleError(
                f"the {data.max_size} largest devices hold {most} < min_group_samples = {low} samples",
                (FAMILY_SIZES, FAMILY_SAMPLES),
                hint=hint,
            )
        return
    biggest = int(np.argmax(data.samples))
    if data.samples[biggest] > high:
        raise InfeasibleError(
            f"device {data.device_ids[biggest]} holds {int(data.samples[biggest])} samples > "
            f"max_group_samples = {high}",
            (FAMILY_SAMPLES,),
            hint=hint,
        )
    if k * high < total:
        raise InfeasibleError(
            f"max_group_samples * num_groups = {high} * {k} = {k * high} < {total} samples",
            (FAMILY_SAMPLES,),
            hint=hint,
        )
    least = int(np.sort(data.samples)[: data.min_size].sum())
    if least > high:
        raise InfeasibleError(
            f"the {data.min_size} smallest devices hold {least} > max_group_samples = {high} samples",
            (FAMILY_SIZES, FAMILY_SAMPLES),
            hint=hint,
        )


class _OrWindow:
    """OR over a sliding window of Python ints (bitsets), amortised O(1) per push and pop."""

    def __init__(self) -> None:
        self._back: list[int] = []
        self._back_or = 0
        self._front: list[int] = []  # _front[-1] is the OR of the oldest items still held

    def push(self, value: int) -> None:
        self._back.append(value)
        self._back_or |= value

    def pop_oldest(self) -> None:
        if not self._front:
            running = 0
            for value in reversed(self._back):
                running |= value
                self._front.append(running)
            self._back, self._back_or = [], 0
        self._front.pop()

    def total(self) -> int:
        return (self._front[-1] if self._front else 0) | self._back_or


def segment_sizes_by_speed(
    scales: Sequence[float] | NDArray[np.float64],
    num_groups: int,
    min_size: int,
    max_size: int,
    ratio: float,
    tie_break: NDArray[np.float64] | None = None,
) -> list[list[int]] | None:
    """Split devices, sorted by compute scale, into ``num_groups`` contiguous groups of ``min_size..max_size``
    devices whose slowest/fastest scale is ``<= ratio``; ``None`` when no such split exists.

    Contiguity loses nothing: if any partition meets sizes and speed band, so does a
    contiguous one. Order the partition's groups by their fastest scale ``m_t`` and give
    segment ``t`` the next ``|G_t|`` devices in sorted order. Fewer than ``p_t`` devices
    (the size of the groups before ``t``) are faster than ``m_t``, so the segment starts
    at a scale ``>= m_t``; groups ``1..t`` all lie in ``[.., ratio * m_t]`` and hold
    ``p_t + |G_t|`` devices, so the segment ends at a scale ``<= ratio * m_t``.

    The search is a dynamic programme over prefixes: ``reach[j]`` is the bitset of group
    counts that can split the first ``j`` devices, the OR of ``reach[i] << 1`` over the
    valid segment starts ``i``, a window whose ends only move right (sliding-window OR).
    Returned groups hold positions into ``scales``, segments chosen as even as the window allows;
    devices of equal scale are ordered by ``tie_break`` (then by position).
    """
    values = np.asarray(scales, dtype=np.float64)
    ties = np.zeros(len(values)) if tie_break is None else tie_break
    order = np.lexsort((np.arange(len(values)), ties, values))
    ordered = values[order]
    n, mask = len(ordered), (1 << (num_groups + 1)) - 1
    reach = [1] + [0] * n
    window, left, right, first_fit = _OrWindow(), 0, -1, 0
    starts = [0] * (n + 1)  # smallest valid segment start for each end j
    for j in range(1, n + 1):
        while ordered[j - 1] > ratio * ordered[first_fit]:
            first_fit += 1
        lo, hi = max(j - max_size, first_fit), j - min_size
        while right < hi:
            right += 1
            window.push(reach[right])
        while left < lo and left <= right:
            window.pop_oldest()
            left += 1
        if left < lo:  # the window emptied before reaching lo: restart it there
            left, right = lo, max(right, lo - 1)
        starts[j] = lo
        reach[j] = (window.total() << 1) & mask if lo <= hi else 0
    if not (reach[n] >> num_groups) & 1:
        return None
    groups, end, remaining = [], n, num_groups
    while end > 0:
        lo, hi = starts[end], end - min_size
        start = _nearest_reachable(reach, lo, hi, end - round(end / remaining), remaining - 1)
        groups.append(sorted(int(p) for p in order[start:end]))
        end, remaining = start, remaining - 1
    return sorted(groups)


def _nearest_reachable(reach: list[int], lo: int, hi: int, target: int, count: int) -> int:
    """The start in ``[lo, hi]`` nearest ``target`` whose prefix splits into ``count`` groups."""
    target = min(max(target, lo), hi)
    for step in range(hi - lo + 1):
        for start in (target - step, target + step):
            if lo <= start <= hi and (reach[start] >> count) & 1:
                return start
    raise AssertionError("the dynamic programme promised a reachable start")  # internal invariant
