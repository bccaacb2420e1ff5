"""Local search for grouping: exchanges of small bundles of devices between two groups at a time.

Formulation: :mod:`hierfedlora.planner.grouping`. The search keeps each group's integer
residual ``r_k = sum_{i in k} E_i`` (``grouping.model``): the L1 part of the objective is
``sum_k ||r_k||_1 / S**2``, and an exchange between groups a and b changes only ``r_a`` and
``r_b``, so a candidate costs O(C).

A *bundle* is what leaves a group: nothing, one device, or (at level 2) two devices.
Exchanging bundle X of a for bundle Y of b covers moves (one side empty), swaps, and at
level 2 pair swaps, two-for-one swaps and pair moves. All candidates of a pair of groups
are evaluated at once with numpy, and the best is applied while it improves
``(sample violation, objective)`` lexicographically. Sizes (2) and the speed band (4) are
never broken; the start must meet them.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner.grouping.model import GroupingData

__all__ = ["LocalSearch"]

_PARTNERS = 3  # partners per group and per criterion in a pass
_MAX_PASSES = 200
_MAX_CANDIDATE_FLOATS = 2_000_000  # bundle pairs x classes evaluated at once; beyond it, level 1 only
_CALL_WORK = 20_000  # an evaluation's fixed overhead, in candidate floats (measured: ~50 us vs ~3 ns a float)
_MIN_PASS_GAIN = 1e-4  # a full pass improving the objective by less than this fraction ends the descent


@dataclasses.dataclass(frozen=True, slots=True)
class _Bundles:
    """Every bundle that can leave one group, as arrays (one row per bundle)."""

    first: NDArray[np.int64]  # device, or -1
    second: NDArray[np.int64]  # device, or -1
    excess: NDArray[np.float64]  # (B, C) sum of the bundle's E_i
    samples: NDArray[np.int64]
    count: NDArray[np.int64]
    low_in: NDArray[np.float64]  # fastest scale in the bundle (inf when empty)
    high_in: NDArray[np.float64]  # slowest scale in the bundle (-inf when empty)
    low_rest: NDArray[np.float64]  # fastest scale left in the group (inf when none)
    high_rest: NDArray[np.float64]


def _bundles(
    members: NDArray[np.int64],
    excess: NDArray[np.float64],
    samples: NDArray[np.int64],
    scales: NDArray[np.float64],
    level: int,
) -> _Bundles:
    """Bundles of ``members``: the empty one, singles and, at level 2, pairs."""
    n = len(members)
    none = n  # local position meaning "no device"
    if level == 2:
        rows, cols = np.triu_indices(n, k=1)
        first = np.concatenate([[none], np.arange(n), rows])
        second = np.concatenate([[none], np.full(n, none), cols])
    else:
        first, second = np.concatenate([[none], np.arange(n)]), np.full(n + 1, none)
    local_excess = np.vstack([excess[members], np.zeros((1, excess.shape[1]))])
    local_samples = np.append(samples[members], 0)
    local_scales = scales[members]
    low_pad, high_pad = np.append(local_scales, np.inf), np.append(local_scales, -np.inf)
    ascending = np.append(np.argsort(local_scales, kind="stable")[:3], [none] * 3)
    descending = np.append(np.argsort(-local_scales, kind="stable")[:3], [none] * 3)
    low_rest = _first_outside(ascending, first, second, low_pad)
    high_rest = _first_outside(descending, first, second, high_pad)
    global_ids = np.append(members, -1)
    return _Bundles(
        first=global_ids[first],
        second=global_ids[second],
        excess=local_excess[first] + local_excess[second],
        samples=local_samples[first] + local_samples[second],
        count=(first < none).astype(np.int64) + (second < none),
        low_in=np.minimum(low_pad[first], low_pad[second]),
        high_in=np.maximum(high_pad[first], high_pad[second]),
        low_rest=low_rest,
        high_rest=high_rest,
    )


def _first_outside(
    order: NDArray[np.int64], first: NDArray[np.int64], second: NDArray[np.int64], padded: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``padded`` at the first of ``order[:3]`` not in the bundle: the extreme left behind (bundles hold <= 2)."""
    result: NDArray[np.float64] = np.full(len(first), padded[order[2]])
    for pos in (1, 0):
        outside = (first != order[pos]) & (second != order[pos])
        result = np.where(outside, padded[order[pos]], result)
    return result


class LocalSearch:
    """Mutable search state over one assignment (``group_of[i]`` is device i's group).

    ``use_cost=False`` makes the search objective-blind: it only repairs sample bounds.
    """

    def __init__(self, data: GroupingData, group_of: NDArray[np.int64], *, use_cost: bool) -> None:
        self.data, self.use_cost = data, use_cost
        self.excess = data.excess.astype(np.float64)  # exact while S**2 < 2**53
        self.group_of = group_of.astype(np.int64).copy()
        self.members: list[list[int]] = [np.flatnonzero(self.group_of == k).tolist() for k in range(data.num_groups)]
        self.residual = np.zeros((data.num_groups, data.excess.shape[1]))
        np.add.at(self.residual, self.group_of, self.excess)
        self.samples = np.bincount(self.group_of, weights=data.samples, minlength=data.num_groups).astype(np.int64)
        self.sizes = np.bincount(self.group_of, minlength=data.num_groups)
        # version stamps come from one counter, so a stamp names one content of its group forever
        self.version = np.arange(data.num_groups, dtype=np.int64)
        self._stamp = data.num_groups
        self._journal: list[tuple[int, int]] = []  # (device, group it left), for undo
        self.work = 0  # candidate floats evaluated (plus _CALL_WORK per evaluation): a clock that is deterministic
        self._settled: dict[tuple[int, int, int], tuple[int, int]] = {}
        self.speed_weight = data.speed_weight * data.total_samples**2 if data.has_speed_term else 0.0
        self.track_speed = self.speed_weight > 0 or data.max_speed_ratio is not None
        self.sample_bounds = data.min_samples > 0 or data.max_samples is not None
        self.max_samples = data.max_samples if data.max_samples is not None else data.total_samples
        log_range = math.log(float(data.scales.max() / data.scales.min()))
        # integer L1 steps are >= 1; float error in the spread part is far below this tolerance
        self.tolerance = 0.5 if self.speed_weight == 0 else 1e-12 * self.speed_weight * (1 + log_range) + 1e-9

    def violation(self, samples: NDArray[np.int64]) -> NDArray[np.int64]:
        """Samples outside (3), per group."""
        return np.maximum(samples - self.max_samples, 0) + np.maximum(self.data.min_samples - samples, 0)

    def total_violation(self) -> int:
        """Samples outside (3), all groups."""
        return int(self.violation(self.samples).sum())

    def score(self) -> tuple[int, float]:
        """``(sample violation, objective * S**2)``, compared lexicographically."""
        cost = float(np.abs(self.residual).sum())
        if self.speed_weight:
            scales = [self.data.scales[m] for m in self.members]
            cost += sum(float(self._speed(group.min(), group.max())[1]) for group in scales)
        return self.total_violation(), cost

    def move(self, device: int, target: int) -> None:
        """Put ``device`` into group ``target``, updating every running total."""
        source = int(self.group_of[device])
        self.members[source].remove(device)
        self.members[target].append(device)
        self.group_of[device] = target
        self.residual[source] -= self.excess[device]
        self.residual[target] += self.excess[device]
        for group, sign in ((source, -1), (target, 1)):
            self.samples[group] += sign * self.data.samples[device]
            self.sizes[group] += sign
            self.version[group] = self._stamp
            self._stamp += 1
        self._journal.append((device, source))

    def checkpoint(self) -> tuple[int, NDArray[np.int64]]:
        """A mark to :meth:`rollback` to."""
        return len(self._journal), self.version.copy()

    def rollback(self, mark: tuple[int, NDArray[np.int64]]) -> None:
        """Undo every move since ``mark``; settled pairs of that state stay settled."""
        length, version = mark
        while len(self._journal) > length:
            device, source = self._journal.pop()
            self.move(device, source)
            self._journal.pop()
        self.version = version.copy()

    def _speed(
        self, low: NDArray[np.float64] | float, high: NDArray[np.float64] | float
    ) -> tuple[NDArray[np.bool_], NDArray[np.float64] | float]:
        """Whether groups with scales from ``low`` to ``high`` meet (4), and their weighted spread."""
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        ratio = self.data.max_speed_ratio
        fits = np.asarray(high <= ratio * low) if ratio is not None else np.ones(low.shape, dtype=bool)
        if not self.speed_weight:
            return fits, 0.0
        with np.errstate(invalid="ignore", divide="ignore"):  # empty groups (inf, -inf) are never allowed anyway
            return fits, self.speed_weight * (np.log(high) - np.log(low))

    def best_exchange(self, a: int, b: int, level: int) -> tuple[_Bundles, int, _Bundles, int] | None:
        """The best improving exchange of a bundle of a for a bundle of b, or None."""
        data = self.data
        if (
            level == 2
            and (self.sizes[a] + 1) * (self.sizes[b] + 1) * self.sizes[a] * self.sizes[b] * self.excess.shape[1]
            > 4 * _MAX_CANDIDATE_FLOATS
        ):
            level = 1
        out_a = _bundles(np.array(self.members[a]), self.excess, data.samples, data.scales, level)
        out_b = _bundles(np.array(self.members[b]), self.excess, data.samples, data.scales, level)
        res_a, res_b = self.residual[a], self.residual[b]
        self.work += _CALL_WORK + len(out_a.count) * len(out_b.count) * self.excess.shape[1]
        delta = out_b.excess[None, :, :] - out_a.excess[:, None, :]  # r_a += E_Y - E_X
        cost = np.abs(res_a + delta).sum(-1) + np.abs(res_b - delta).sum(-1) - np.abs(res_a).sum() - np.abs(res_b).sum()
        size_a = self.sizes[a] - out_a.count[:, None] + out_b.count[None, :]
        size_b = self.sizes[b] + out_a.count[:, None] - out_b.count[None, :]
        allowed = (
            (size_a >= data.min_size)
            & (size_a <= data.max_size)
            & (size_b >= data.min_size)
            & (size_b <= data.max_size)
            & ((out_a.count[:, None] + out_b.count[None, :]) > 0)
        )
        if self.track_speed:
            fits_a, spread_a = self._speed(
                np.minimum(out_a.low_rest[:, None], out_b.low_in[None, :]),
                np.maximum(out_a.high_rest[:, None], out_b.high_in[None, :]),
            )
            fits_b, spread_b = self._speed(
                np.minimum(out_b.low_rest[None, :], out_a.low_in[:, None]),
                np.maximum(out_b.high_rest[None, :], out_a.high_in[:, None]),
            )
            allowed &= fits_a & fits_b
            if self.speed_weight:
                _, now_a = self._speed(data.scales[self.members[a]].min(), data.scales[self.members[a]].max())
                _, now_b = self._speed(data.scales[self.members[b]].min(), data.scales[self.members[b]].max())
                cost = cost + spread_a + spread_b - now_a - now_b
        if not self.use_cost:
            cost = np.zeros(cost.shape)
        if self.sample_bounds:
            moved = out_b.samples[None, :] - out_a.samples[:, None]
            change = (
                self.violation(self.samples[a] + moved)
                + self.violation(self.samples[b] - moved)
                - self.violation(self.samples[[a, b]]).sum()
            )
            change = np.where(allowed, change, np.iinfo(np.int64).max)
            best = change.min()
            if best > 0 or (best == 0 and not self.use_cost):
                return None
            allowed &= change == best
            threshold = np.inf if best < 0 else -self.tolerance
        else:
            threshold = -self.tolerance
        cost = np.where(allowed, cost, np.inf)
        pick = int(np.argmin(cost))
        row, col = divmod(pick, cost.shape[1])
        if not allowed[row, col] or not cost[row, col] < threshold:
            return None
        return out_a, row, out_b, col

    def improve_pair(self, a: int, b: int, level: int) -> bool:
        """Apply the best exchange between a and b until none improves; True if any did."""
        key = (min(a, b), max(a, b), level)
        if self._settled.get(key) == (self.version[key[0]], self.version[key[1]]):
            return False  # nothing changed in either group since this pair last settled
        steps = 0
        while steps < 4 * (self.sizes[a] + self.sizes[b]):
            exchange = self.best_exchange(a, b, level)
            if exchange is None:
                break
            out_a, row, out_b, col = exchange
            for device in (out_a.first[row], out_a.second[row]):
                if device >= 0:
                    self.move(int(device), b)
            for device in (out_b.first[col], out_b.second[col]):
                if device >= 0:
                    self.move(int(device), a)
            steps += 1
        self._settled[key] = (int(self.version[key[0]]), int(self.version[key[1]]))
        return steps > 0

    def partners(
        self, a: int, unit: NDArray[np.float64], fastest: NDArray[np.float64], rng: np.random.Generator
    ) -> list[int]:
        """Groups worth pairing with a: opposite residuals, opposite sample slack, speed neighbours, one at random."""
        count = min(_PARTNERS, self.data.num_groups - 1)
        found = set(np.argpartition(unit @ unit[a], count)[: count + 1].tolist())
        if self.sample_bounds and self.samples[a] > self.max_samples:
            found |= set(np.argpartition(self.samples, count)[: count + 1].tolist())
        elif self.sample_bounds and self.samples[a] < self.data.min_samples:
            found |= set(np.argpartition(-self.samples, count)[: count + 1].tolist())
        if self.track_speed:
            found |= set(np.argpartition(np.abs(fastest - fastest[a]), count)[: count + 1].tolist())
        found.add(int(rng.integers(self.data.num_groups)))
        found.discard(a)
        return sorted(found)

    def run(
        self, rng: np.random.Generator, limits: tuple[float, int], level: int = 1, focus: set[int] | None = None
    ) -> bool:
        """Passes of pair improvement; False if a limit (``(deadline, work budget)``) cut them short.

        Each pass visits every group, worst first, until a pass gains less than
        ``_MIN_PASS_GAIN`` of the objective. With a ``focus``, the first pass visits those
        groups and later passes the groups the previous pass changed, until none did.
        """
        deadline, budget = limits
        active = set(range(self.data.num_groups)) if focus is None else set(focus)
        for _ in range(_MAX_PASSES):
            if not active:
                return True
            before = self.score()
            norms = np.abs(self.residual).sum(axis=1)
            unit = self.residual / np.maximum(np.linalg.norm(self.residual, axis=1), 1e-12)[:, None]
            fastest = np.log([self.data.scales[m].min() for m in self.members]) if self.track_speed else norms
            urgency = self.violation(self.samples) * (1 + norms.max()) + norms
            changed: set[int] = set()
            for a in sorted(active, key=lambda g: (-urgency[g], g)):
                if time.perf_counter() > deadline or self.work > budget:
                    return False
                for b in self.partners(a, unit, fastest, rng):
                    if self.improve_pair(a, b, level):
                        changed |= {a, b}
            if focus is not None:
                active = changed
                continue
            after = self.score()
            stalled = after[0] == before[0] and before[1] - after[1] <= _MIN_PASS_GAIN * before[1]
            active = set() if not changed or stalled else set(range(self.data.num_groups))
        return True

    def grouping_members(self) -> tuple[tuple[int, ...], ...]:
        """Members per group, sorted, groups ordered by smallest member."""
        return tuple(sorted(tuple(sorted(int(i) for i in m)) for m in self.members))
