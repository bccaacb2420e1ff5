"""The start of the scalable grouping: blocked dealing, linear in the number of devices.

Formulation: :mod:`hierfedlora.planner.grouping`; symbols of :mod:`hierfedlora.planner.grouping.model`.

Devices are dealt like cards, largest ``||E_i||_1`` first, one round at a time: each round gives every
group that still has room one device. Within a round, groups (in a fixed, seeded order) and that
round's devices are cut into *blocks* of at most ``block`` each, and block ``j``'s devices go to block
``j``'s groups by a min-cost assignment (the Hungarian method, :func:`scipy.optimize.linear_sum_assignment`)
whose costs are the exact objective increases ``||r_k + E_i||_1 - ||r_k||_1`` plus the speed term's
increase. With ``K <= block`` there is one block: every round is one exact min-cost assignment. Beyond,
the work is ``O(N * block * C)`` and the memory ``O(chunk)``, never ``K x K``: at ``K = 100,000`` a round is
1,563 assignments of 64 x 64.

The same ``(data, seed)`` gives the same start. ``deadline`` is a safety cap checked every round.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from hierfedlora.planner.grouping.model import GroupingData

__all__ = ["DEAL_BLOCK", "DeadlineError", "deal"]

DEAL_BLOCK = 1_024  # up to this many groups, every round is one min-cost assignment over all of them
_BLOCK = 512  # beyond, groups are dealt in strata of this many
_CHUNK_FLOATS = 4_000_000  # cost-matrix floats built at once (32 MB)


class DeadlineError(Exception):
    """The wall-clock safety cap passed (internal: the caller turns it into a ``Limit.TIME`` outcome)."""


def deal(
    data: GroupingData,
    devices: NDArray[np.int64],
    sizes: NDArray[np.int64],
    *,
    seed: int = 0,
    deadline: float = float("inf"),
    exact_up_to: int = DEAL_BLOCK,
    block: int = _BLOCK,
) -> NDArray[np.int64]:
    """Deal ``devices`` into groups of ``sizes`` (module docstring); each device's group, aligned with ``devices``.

    Raises
    ------
    DeadlineError
        ``time.perf_counter()`` passed ``deadline`` between rounds.
    """
    num_groups = len(sizes)
    if num_groups <= exact_up_to:
        return _deal_exact(data, devices, sizes, deadline)
    # strata: groups in a seeded order, cut into blocks; devices spread over the blocks in proportion
    order = np.random.default_rng([seed, 1]).permutation(num_groups)
    blocks = np.array_split(order, -(-num_groups // block))
    capacity = np.array([int(sizes[g].sum()) for g in blocks])
    block_of = _stratified_labels(data, devices, capacity)
    group_of = np.empty(len(devices), dtype=np.int64)
    for b, groups in enumerate(blocks):
        mine = np.flatnonzero(block_of == b)
        group_of[mine] = groups[_deal_exact(data, devices[mine], sizes[groups], deadline)]
    return group_of


def _stratified_labels(
    data: GroupingData, devices: NDArray[np.int64], capacity: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Each device's block: devices sorted by their largest class (then its share), dealt in proportion to
    ``capacity`` (block b's k-th slot sits at ``(k + 1/2) / capacity[b]``), so every block gets a like mix."""
    counts = data.counts[devices]
    share = counts.max(axis=1) / np.maximum(data.samples[devices], 1)
    by_kind = np.lexsort((np.arange(len(devices)), -share, counts.argmax(axis=1)))
    slot_block = np.repeat(np.arange(len(capacity)), capacity)
    slot_place = np.concatenate([(np.arange(c) + 0.5) / c for c in capacity])
    labels = np.empty(len(devices), dtype=np.int64)
    labels[by_kind] = slot_block[np.lexsort((slot_block, slot_place))]
    return labels


def _deal_exact(
    data: GroupingData, devices: NDArray[np.int64], sizes: NDArray[np.int64], deadline: float
) -> NDArray[np.int64]:
    """Deal round by round, each round one min-cost assignment over every open group."""
    num_groups = len(sizes)
    excess = data.excess[devices].astype(np.float64)
    scales = data.scales[devices]
    order = np.lexsort((np.arange(len(devices)), -np.abs(excess).sum(axis=1), -data.samples[devices]))
    residual = np.zeros((num_groups, excess.shape[1]))
    low, high = np.full(num_groups, np.inf), np.full(num_groups, -np.inf)
    weight = data.speed_weight * data.total_samples**2 if data.has_speed_term else 0.0
    group_of, position = np.empty(len(devices), dtype=np.int64), 0
    for round_idx in range(int(sizes.max())):
        if time.perf_counter() > deadline:
            raise DeadlineError
        open_groups = np.flatnonzero(sizes > round_idx)
        dealt = order[position : position + len(open_groups)]
        position += len(open_groups)
        cost = _block_costs(residual, excess, scales, low, high, weight, open_groups[None, :], dealt[None, :])[0]
        rows, cols = linear_sum_assignment(cost)
        chosen, groups = dealt[rows], open_groups[cols]
        group_of[chosen] = groups
        residual[groups] += excess[chosen]
        low[groups] = np.minimum(low[groups], scales[chosen])
        high[groups] = np.maximum(high[groups], scales[chosen])
    return group_of


def _block_costs(
    residual: NDArray[np.float64],
    excess: NDArray[np.float64],
    scales: NDArray[np.float64],
    low: NDArray[np.float64],
    high: NDArray[np.float64],
    weight: float,
    groups: NDArray[np.int64],
    devices: NDArray[np.int64],
) -> NDArray[np.float64]:
    """``cost[b, i, k] = ||r_k + E_i||_1 - ||r_k||_1`` (+ the speed term's increase) for each block ``b``."""
    res = residual[groups]  # (B, w, C)
    exc = excess[devices]  # (B, w, C)
    cost = np.zeros((len(groups), devices.shape[1], groups.shape[1]))
    scratch = np.empty_like(cost)
    for c in range(res.shape[2]):  # one class at a time: small temporaries
        np.add(exc[:, :, c, None], res[:, None, :, c], out=scratch)
        np.abs(scratch, out=scratch)
        cost += scratch
    cost -= np.abs(res).sum(axis=2)[:, None, :]
    if weight:
        g_low, g_high, s = low[groups][:, None, :], high[groups][:, None, :], scales[devices][:, :, None]
        started = np.isfinite(g_low)
        with np.errstate(invalid="ignore"):
            old = np.where(started, np.log(g_high) - np.log(g_low), 0.0)
        cost += weight * (np.log(np.maximum(g_high, s)) - np.log(np.minimum(g_low, s)) - old)
    return cost
