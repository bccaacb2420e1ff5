"""Batched exchange descent: many disjoint pairs of groups improved at once, in one numpy evaluation.

Formulation: :mod:`hierfedlora.planner.grouping`; symbols of :mod:`hierfedlora.planner.grouping.model`.
Groups are kept as *slot* arrays (``slots[k, w]`` a device, or -1 for a free slot, plus one column
that is always free). A *bundle* is what leaves a group: nothing, one device or (level 2) two,
named by slot positions. Exchanging bundle X of group a for bundle Y of group b changes only
``r_a`` and ``r_b`` (``r_a += E_Y - E_X``), so its change of the objective is::

    delta = ||r_a + E_Y - E_X||_1 + ||r_b - E_Y + E_X||_1 - ||r_a||_1 - ||r_b||_1   (+ the speed term's change)

A *sweep* takes a matching of the groups (pairs share no group), evaluates every bundle pair of
every matched pair at once (``P x B_a x B_b x C`` floats, in chunks), and applies each pair's best
exchange when it improves ``(sample violation, objective)`` lexicographically. Because the pairs
are disjoint, all of a sweep's exchanges apply together and each one's delta is exact. Sizes (2)
and the speed band (4) are never broken; the start must meet them.

Matchings. Up to ``TOURNAMENT_MAX_GROUPS`` groups, sweeps walk a round-robin tournament (the circle
method), so ``K - 1`` sweeps try every pair; a full tournament without an improving exchange is a
local optimum. Beyond, a sweep pairs the groups sorted by their residual's projection on a
direction, first with last (the most opposite residuals meet), the direction drawn from the seed;
every fourth sweep is a random matching.

Work. ``work`` counts the candidate floats evaluated (plus a fixed charge per numpy evaluation):
a clock that runs the same on a loaded and an idle host. Searches stop on it; ``deadline`` is
only a safety cap (:class:`~hierfedlora.planner.grouping.start.DeadlineError`).
"""

from __future__ import annotations

import math
import time

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner.grouping.model import GroupingData
from hierfedlora.planner.grouping.start import DeadlineError

__all__ = ["TOURNAMENT_MAX_GROUPS", "ExchangeSearch", "circle_matching"]

TOURNAMENT_MAX_GROUPS = 128  # up to this many groups, sweeps walk a round-robin tournament
_CHUNK_CANDIDATES = 1 << 20  # bundle pairs evaluated at once (8 MB a scratch array)
_CALL_WORK = 20_000  # a numpy evaluation's fixed cost, in candidate floats
_ONE_SHOT_FLOATS = 1 << 16  # up to this many candidate floats, all classes in one evaluation (cache-sized)
_BIG = np.iinfo(np.int64).max


def _bundle_table(width: int, level: int) -> NDArray[np.int64]:
    """Bundles as pairs of slot positions in ``0..width`` (``width`` is the always-free column)."""
    none = width
    rows = [(none, none)] + [(x, none) for x in range(width)]
    if level == 2:
        rows += [(x, y) for x in range(width) for y in range(x + 1, width)]
    return np.array(rows, dtype=np.int64)


def circle_matching(num_groups: int, round_idx: int) -> NDArray[np.int64]:
    """Round ``round_idx`` of the circle method: ``(pairs, 2)`` groups, every pair once per ``K - 1`` rounds."""
    players = num_groups + (num_groups % 2)  # a bye when odd
    others = np.arange(1, players)
    rotated = np.roll(others, round_idx % (players - 1))
    seats = np.concatenate([[0], rotated])
    pairs = np.stack([seats[: players // 2], seats[::-1][: players // 2]], axis=1)
    return pairs[(pairs < num_groups).all(axis=1)]


class ExchangeSearch:
    """Mutable search state over one assignment (``group_of[i]`` is device i's group)."""

    def __init__(self, data: GroupingData, group_of: NDArray[np.int64], *, deadline: float = math.inf) -> None:
        self.data, self.deadline = data, deadline
        num_devices, num_classes = data.excess.shape
        # one zero row at index N stands for "no device": exact while S**2 < 2**53
        self.excess = np.vstack([data.excess.astype(np.float64), np.zeros((1, num_classes))])
        self.sample_of = np.append(data.samples, 0).astype(np.int64)
        self.low_of = np.append(data.scales, np.inf)
        self.high_of = np.append(data.scales, -np.inf)
        self.group_of = group_of.astype(np.int64).copy()
        self.residual = np.zeros((data.num_groups, num_classes))
        np.add.at(self.residual, self.group_of, self.excess[:num_devices])
        self.samples = np.bincount(self.group_of, weights=data.samples, minlength=data.num_groups).astype(np.int64)
        self.sizes = np.bincount(self.group_of, minlength=data.num_groups).astype(np.int64)
        self.work = 0
        self.speed_weight = data.speed_weight * data.total_samples**2 if data.has_speed_term else 0.0
        self.track_speed = self.speed_weight > 0 or data.max_speed_ratio is not None
        self.ratio = float(data.max_speed_ratio) if data.max_speed_ratio is not None else math.inf
        self.sample_bounds = data.min_samples > 0 or data.max_samples is not None
        self.max_samples = data.max_samples if data.max_samples is not None else data.total_samples
        log_range = math.log(float(data.scales.max() / data.scales.min()))
        # integer L1 steps are >= 1; float error in the spread part is far below this tolerance
        self.tolerance = 0.5 if self.speed_weight == 0 else 1e-12 * self.speed_weight * (1 + log_range) + 1e-9
        self._layout()

    # ----------------------------------------------------------------------------------------------
    # state

    def _layout(self) -> None:
        """Rebuild ``slots`` from ``group_of``: width = largest size + 1 (capped by max_size), + a free column."""
        num_groups = self.data.num_groups
        width = int(min(self.data.max_size, self.sizes.max() + 1))
        order = np.argsort(self.group_of, kind="stable")
        starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        position = np.arange(len(order)) - starts[self.group_of[order]]
        none = self.data.num_devices
        self.slots = np.full((num_groups, width + 1), none, dtype=np.int64)
        self.slots[self.group_of[order], position] = order
        self.width = width

    def violation(self, samples: NDArray[np.int64]) -> NDArray[np.int64]:
        """Samples outside (3), per group."""
        return np.maximum(samples - self.max_samples, 0) + np.maximum(self.data.min_samples - samples, 0)

    def total_violation(self) -> int:
        """Samples outside (3), all groups."""
        return int(self.violation(self.samples).sum())

    def spreads(self) -> NDArray[np.float64]:
        """Each group's weighted speed spread ``w S**2 (log max - log min)`` (zeros without a speed term)."""
        if not self.speed_weight:
            return np.zeros(self.data.num_groups)
        low = self.low_of[self.slots].min(axis=1)
        high = self.high_of[self.slots].max(axis=1)
        return self.speed_weight * (np.log(high) - np.log(low))

    def score(self) -> tuple[int, float]:
        """``(sample violation, objective * S**2)``, compared lexicographically."""
        return self.total_violation(), float(np.abs(self.residual).sum() + self.spreads().sum())

    def members(self) -> tuple[tuple[int, ...], ...]:
        """Members per group, sorted, groups ordered by smallest member."""
        order = np.argsort(self.group_of, kind="stable")
        cuts = np.cumsum(self.sizes)[:-1]
        return tuple(sorted(tuple(int(i) for i in part) for part in np.split(order, cuts)))

    def snapshot(self) -> tuple[NDArray[np.int64], ...]:
        """The state, to :meth:`restore`."""
        return self.group_of.copy(), self.slots.copy(), self.samples.copy(), self.sizes.copy(), self.residual.copy()

    def restore(self, saved: tuple[NDArray[np.int64], ...]) -> None:
        """Go back to a :meth:`snapshot` (work done stays counted)."""
        group_of, slots, samples, sizes, residual = (array.copy() for array in saved)
        self.group_of, self.slots, self.samples, self.sizes, self.residual = group_of, slots, samples, sizes, residual
        self.width = self.slots.shape[1] - 1

    def random_swaps(self, rng: np.random.Generator, a: int, b: int, attempts: int) -> None:
        """Swap random devices of groups a and b, each swap kept when (4) holds and (3) gets no worse."""
        for _ in range(attempts):
            x = int(rng.integers(self.width))
            y = int(rng.integers(self.width))
            pairs = np.array([[a, b]])
            table = np.array([[x, self.width], [y, self.width]])
            # evaluate exactly this exchange: row 0 of a's table against row 1 of b's
            dev_a, dev_b = self.slots[a, x], self.slots[b, y]
            if dev_a == self.data.num_devices or dev_b == self.data.num_devices:
                continue
            low_a = np.append(np.delete(self.low_of[self.slots[a]], x), self.low_of[dev_b])
            low_b = np.append(np.delete(self.low_of[self.slots[b]], y), self.low_of[dev_a])
            high_a = np.append(np.delete(self.high_of[self.slots[a]], x), self.high_of[dev_b])
            high_b = np.append(np.delete(self.high_of[self.slots[b]], y), self.high_of[dev_a])
            if high_a.max() > self.ratio * low_a.min() or high_b.max() > self.ratio * low_b.min():
                continue
            moved = int(self.sample_of[dev_b] - self.sample_of[dev_a])
            after = self.violation(self.samples[[a, b]] + np.array([moved, -moved])).sum()
            if after > self.violation(self.samples[[a, b]]).sum():
                continue
            self._apply(pairs, table, np.array([0]), np.array([1]), np.array([True]))

    # ----------------------------------------------------------------------------------------------
    # one sweep

    def sweep(self, pairs: NDArray[np.int64], level: int, *, disjoint: bool = True) -> NDArray[np.int64]:
        """Evaluate every bundle exchange of every pair (rows of ``pairs``); apply the improving ones.

        Pairs must share no group, unless ``disjoint=False``: then the improving pairs are taken
        best gain first, skipping any that shares a group with one taken. Returns the pairs that changed.

        Raises
        ------
        DeadlineError
            The safety cap passed (checked once per chunk).
        """
        table = _bundle_table(self.width, level)
        per_pair = len(table) ** 2 * self.excess.shape[1]
        chunk = max(1, _CHUNK_CANDIDATES // len(table) ** 2)
        changed = []
        for start in range(0, len(pairs), chunk):
            if time.perf_counter() > self.deadline:
                raise DeadlineError
            part = pairs[start : start + chunk]
            self.work += _CALL_WORK + len(part) * per_pair
            x, y, improves, gain = self._best(part, table)
            if not disjoint:
                improves = _disjoint_best(part, improves, gain)
            changed.append(self._apply(part, table, x, y, improves))
        if self.width < self.data.max_size and (self.sizes >= self.width).any():
            self._layout()  # a group filled its slots: widen them, so devices can still move in
        return np.concatenate(changed) if changed else np.empty((0, 2), dtype=np.int64)

    def _best(
        self, pairs: NDArray[np.int64], table: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_], NDArray[np.float64]]:
        """Each pair's best exchange: bundle rows ``(x, y)``, whether it improves, and its gain (sort key)."""
        a, b = pairs[:, 0], pairs[:, 1]
        none = self.data.num_devices
        dev_a, dev_b = self.slots[a][:, table], self.slots[b][:, table]  # (P, B, 2) devices (none = N)
        exc_a = self.excess[dev_a].sum(axis=2)  # (P, B, C)
        exc_b = self.excess[dev_b].sum(axis=2)
        res_a, res_b = self.residual[a], self.residual[b]
        # delta[p, x, y] = E_Y - E_X; every term is an integer held exactly in float64, so the order of the
        # sums cannot change a cost, and both ways below give the same numbers bit for bit
        if len(pairs) * len(table) ** 2 * self.excess.shape[1] <= _ONE_SHOT_FLOATS:  # small: all classes at once
            to_b, to_a = exc_b.transpose(2, 0, 1), exc_a.transpose(2, 0, 1)  # (C, P, B): classes outermost
            delta = to_b[:, :, None, :] - to_a[:, :, :, None]  # (C, P, B, B)
            cost = np.abs(delta + res_a.T[:, :, None, None]).sum(axis=0)
            delta -= res_b.T[:, :, None, None]
            cost += np.abs(delta).sum(axis=0)
        else:  # one class at a time (small temporaries)
            cost = np.zeros((len(pairs), len(table), len(table)))
            scratch = np.empty_like(cost)
            for c in range(self.excess.shape[1]):
                np.subtract(exc_b[:, None, :, c], exc_a[:, :, None, c], out=scratch)
                scratch += res_a[:, c, None, None]
                np.abs(scratch, out=scratch)
                cost += scratch
                np.subtract(exc_a[:, :, None, c], exc_b[:, None, :, c], out=scratch)
                scratch += res_b[:, c, None, None]
                np.abs(scratch, out=scratch)
                cost += scratch
        cost -= (np.abs(res_a).sum(axis=1) + np.abs(res_b).sum(axis=1))[:, None, None]
        count_a = (dev_a < none).sum(axis=2)  # (P, B) real devices in the bundle
        count_b = (dev_b < none).sum(axis=2)
        size_a = self.sizes[a][:, None, None] - count_a[:, :, None] + count_b[:, None, :]
        size_b = self.sizes[b][:, None, None] + count_a[:, :, None] - count_b[:, None, :]
        lo, hi = self.data.min_size, self.data.max_size
        allowed = (size_a >= lo) & (size_a <= hi) & (size_b >= lo) & (size_b <= hi)
        allowed &= (count_a[:, :, None] + count_b[:, None, :]) > 0
        allowed &= _distinct(dev_a, none)[:, :, None] & _distinct(dev_b, none)[:, None, :]
        if self.track_speed:
            cost, allowed = self._speed_terms(a, b, table, dev_a, dev_b, cost, allowed)
        rows = np.arange(len(pairs))
        if self.sample_bounds:
            moved = self.sample_of[dev_b].sum(axis=2)[:, None, :] - self.sample_of[dev_a].sum(axis=2)[:, :, None]
            now = self.violation(self.samples[a]) + self.violation(self.samples[b])
            change = (
                self.violation(self.samples[a][:, None, None] + moved)
                + self.violation(self.samples[b][:, None, None] - moved)
                - now[:, None, None]
            )
            change = np.where(allowed, change, _BIG)
            best_change = change.reshape(len(pairs), -1).min(axis=1)
            allowed &= change == best_change[:, None, None]
            cost = np.where(allowed, cost, np.inf)
            pick = cost.reshape(len(pairs), -1).argmin(axis=1)
            best_cost = cost.reshape(len(pairs), -1)[rows, pick]
            improves = (best_change < 0) | ((best_change == 0) & (best_cost < -self.tolerance))
            gain = -best_change * (1.0 + np.abs(self.residual).sum()) - best_cost
        else:
            cost = np.where(allowed, cost, np.inf)
            pick = cost.reshape(len(pairs), -1).argmin(axis=1)
            best_cost = cost.reshape(len(pairs), -1)[rows, pick]
            improves = best_cost < -self.tolerance
            gain = -best_cost
        x, y = np.divmod(pick, len(table))
        return x, y, improves, gain

    def _speed_terms(self, a, b, table, dev_a, dev_b, cost, allowed):  # type: ignore[no-untyped-def]
        """Add the speed term's change to ``cost`` and the band (4) to ``allowed``."""
        rest_low_a, rest_high_a = self._rest_extremes(a, table)
        rest_low_b, rest_high_b = self._rest_extremes(b, table)
        in_low_a, in_high_a = self.low_of[dev_a].min(axis=2), self.high_of[dev_a].max(axis=2)  # (P, B)
        in_low_b, in_high_b = self.low_of[dev_b].min(axis=2), self.high_of[dev_b].max(axis=2)
        new_low_a = np.minimum(rest_low_a[:, :, None], in_low_b[:, None, :])
        new_high_a = np.maximum(rest_high_a[:, :, None], in_high_b[:, None, :])
        new_low_b = np.minimum(rest_low_b[:, None, :], in_low_a[:, :, None])
        new_high_b = np.maximum(rest_high_b[:, None, :], in_high_a[:, :, None])
        allowed = allowed & (new_high_a <= self.ratio * new_low_a) & (new_high_b <= self.ratio * new_low_b)
        if self.speed_weight:
            now = self.spreads()
            with np.errstate(invalid="ignore", divide="ignore"):  # emptied groups are never allowed anyway
                spread = np.log(new_high_a) - np.log(new_low_a) + np.log(new_high_b) - np.log(new_low_b)
            cost = cost + self.speed_weight * spread - (now[a] + now[b])[:, None, None]
        return cost, allowed

    def _rest_extremes(
        self, groups: NDArray[np.int64], table: NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Fastest and slowest scale left in each group after each bundle leaves: ``(P, B)`` each.

        Bundles hold at most two slots, so the extreme left is the first of the group's three most
        extreme slots that is not in the bundle.
        """
        slots = self.slots[groups]
        results = []
        for values, sign in ((self.low_of[slots], 1.0), (self.high_of[slots], -1.0)):
            top = np.argsort(sign * values, axis=1, kind="stable")[:, :3]  # (P, 3) slot positions
            top = np.pad(top, ((0, 0), (0, max(0, 3 - top.shape[1]))), constant_values=self.width)
            padded = np.take_along_axis(values, np.minimum(top, values.shape[1] - 1), axis=1)
            padded = np.where(top < values.shape[1], padded, np.inf * sign)
            result = np.broadcast_to(padded[:, 2, None], (len(groups), len(table))).copy()
            for pos in (1, 0):
                outside = (table[None, :, 0] != top[:, pos, None]) & (table[None, :, 1] != top[:, pos, None])
                result = np.where(outside, padded[:, pos, None], result)
            results.append(result)
        return results[0], results[1]

    def _apply(
        self,
        pairs: NDArray[np.int64],
        table: NDArray[np.int64],
        x: NDArray[np.int64],
        y: NDArray[np.int64],
        improves: NDArray[np.bool_],
    ) -> NDArray[np.int64]:
        """Apply each improving pair's exchange (slot contents swap, running totals follow); the pairs changed."""
        none = self.data.num_devices
        pairs, x, y = pairs[improves], x[improves], y[improves]
        if len(pairs) == 0:
            return pairs
        a, b = pairs[:, 0], pairs[:, 1]
        pos_a, pos_b = table[x], table[y]  # (P, 2) slot positions each
        dev_a = self.slots[a[:, None], pos_a]
        dev_b = self.slots[b[:, None], pos_b]
        delta = self.excess[dev_b].sum(axis=1) - self.excess[dev_a].sum(axis=1)
        self.residual[a] += delta
        self.residual[b] -= delta
        moved = self.sample_of[dev_b].sum(axis=1) - self.sample_of[dev_a].sum(axis=1)
        self.samples[a] += moved
        self.samples[b] -= moved
        count_a, count_b = (dev_a < none).sum(axis=1), (dev_b < none).sum(axis=1)
        self.sizes[a] += count_b - count_a
        self.sizes[b] += count_a - count_b
        real_a, real_b = dev_a[dev_a < none], dev_b[dev_b < none]
        self.group_of[real_a] = np.repeat(b, 2)[(dev_a < none).ravel()]
        self.group_of[real_b] = np.repeat(a, 2)[(dev_b < none).ravel()]
        # slot contents trade places, unless a device would land in the always-free column
        width = self.width
        if np.all((dev_b == none) | (pos_a < width)) and np.all((dev_a == none) | (pos_b < width)):
            self.slots[a[:, None], pos_a] = dev_b
            self.slots[b[:, None], pos_b] = dev_a
        else:
            self._layout()  # rebuild the slots (O(N))
        return pairs


def _disjoint_best(
    pairs: NDArray[np.int64], improves: NDArray[np.bool_], gain: NDArray[np.float64]
) -> NDArray[np.bool_]:
    """Improving pairs taken best gain first, skipping those sharing a group with one taken."""
    taken = np.zeros(len(pairs), dtype=bool)
    used: set[int] = set()
    for p in np.flatnonzero(improves)[np.argsort(-gain[improves], kind="stable")]:
        a, b = int(pairs[p, 0]), int(pairs[p, 1])
        if a not in used and b not in used:
            taken[p] = True
            used.update((a, b))
    return taken


def _distinct(devices: NDArray[np.int64], none: int) -> NDArray[np.bool_]:
    """Bundles that name a device at most once (a free slot may repeat: it is 'nothing')."""
    return (devices[..., 0] != devices[..., 1]) | (devices[..., 0] == none)
