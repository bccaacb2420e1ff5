"""The simulated clock under faults, (K4) of ``runtime.clock``: a round with offline devices, stragglers and a
per-intra-round deadline, its time and the bytes that moved.

Offline devices are left out of their group (no time, no bytes); a straggler's steps take ``slowdown`` times
longer; with a deadline quantile q, intra round r of group k closes at ``D_{k,r} = quantile_q(t_{k,r,i})`` over
its online devices i, devices with ``t > D`` miss it (their uploads are not counted), and the round takes
``min(max_i t_{k,r,i}, D_{k,r})``. Noise factors are drawn as in (K2), over the online devices only; a
``sequential`` group (K5) runs as a chain that no deadline cuts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from hierfedlora.planner import costs
from hierfedlora.planner.outcomes import Group, Plan
from hierfedlora.planner.types import CostModel, DeviceProfile
from hierfedlora.runtime.round_timing import GroupTiming, RoundTiming, _rule_bytes

__all__: list[str] = []


def _faulty_round(
    plan: Plan,
    cost_model: CostModel,
    devices_by_id: Mapping[str, DeviceProfile],
    batch_size: int,
    backhaul_mbps: float,
    intra_latency_s: float,
    global_latency_s: float,
    noise: float,
    rng: np.random.Generator | None,
    offline: frozenset[str],
    slowdown: dict[str, float],
    deadline_quantile: float | None,
    aggregation: str,
    dense_bytes_per_layer: int | None,
    server_ingress_mbps: float | None,
) -> RoundTiming:
    """(K4): a round with offline devices, stragglers and a deadline, its bytes priced by the rule (C9)."""

    def traffic(group: Group, num_inputs: int) -> tuple[int, int]:
        return _rule_bytes(cost_model, group, aggregation, max(1, num_inputs), dense_bytes_per_layer)

    timings = tuple(
        _faulty_group(
            cost_model,
            [devices_by_id[d] for d in g.device_ids if d not in offline],
            g,
            batch_size,
            intra_latency_s,
            noise,
            rng,
            slowdown,
            deadline_quantile,
            traffic,
        )
        for g in plan.groups
    )
    active = [g for g, t in zip(plan.groups, timings, strict=True) if t.device_step_s]
    global_bytes = [traffic(g, len(active)) for g in active]
    global_s = (
        costs.global_aggregation_s(
            cost_model,
            [g.depth for g in active],
            backhaul_mbps=backhaul_mbps,
            latency_s=global_latency_s,
            num_bytes=[up for up, _ in global_bytes],
            server_ingress_mbps=server_ingress_mbps,
            download_bytes=None if all(up == down for up, down in global_bytes) else [d for _, d in global_bytes],
        )
        if active
        else 0.0
    )
    return RoundTiming(
        groups=timings, global_aggregation_s=global_s, round_s=max(t.group_s for t in timings) + global_s
    )


def _faulty_group(
    cost_model: CostModel,
    online: list[DeviceProfile],
    group: Group,
    batch_size: int,
    latency_s: float,
    noise: float,
    rng: np.random.Generator | None,
    slowdown: dict[str, float],
    deadline_quantile: float | None,
    traffic: Callable[[Group, int], tuple[int, int]],
) -> GroupTiming:
    """(K4) for one group: per-device times of its online members, the deadline, the bytes that moved.

    One exchange moves ``traffic(group, n)`` (C9) with ``n`` the online devices (what FLoRA stacks).
    """
    if not online:
        none = ((),) * group.intra_rounds
        return GroupTiming(
            group_id=group.group_id,
            intra_round_s=(0.0,) * group.intra_rounds,
            group_s=0.0,
            upload_bytes=0,
            download_bytes=0,
            missed=none,
        )
    num_bytes, down_bytes = traffic(group, len(online))
    download = None if down_bytes == num_bytes else down_bytes  # None: the symmetric formula, bit for bit
    step_s = np.array(
        [
            slowdown.get(d.device_id, 1.0)
            * costs.step_time_s(cost_model, compute_scale=d.compute_scale, depth=group.depth, batch_size=batch_size)
            for d in online
        ]
    )
    exchange_s = np.array(
        [
            costs.exchange_time_s(
                cost_model, d, depth=group.depth, latency_s=latency_s, num_bytes=num_bytes, download_bytes=download
            )
            for d in online
        ]
    )
    if noise > 0 and rng is not None:
        factors = rng.lognormal(
            mean=-(noise**2) / 2, sigma=noise, size=(group.intra_rounds, len(online), group.local_steps)
        )
        device_s = step_s * factors.sum(axis=2) + exchange_s
        mean_step_s = step_s * factors.mean(axis=(0, 2))
    else:
        device_s = np.tile(step_s * group.local_steps + exchange_s, (group.intra_rounds, 1))
        mean_step_s = step_s
    intra, missed, uploads = [], [], 0
    for times in device_s:
        if group.sequential:  # a chain: every online device in turn, no deadline (it would cut the chain)
            intra.append(math.fsum(times))
            missed.append(())
            uploads += len(online) * num_bytes
            continue
        deadline = float(np.quantile(times, deadline_quantile)) if deadline_quantile is not None else math.inf
        late = tuple(d.device_id for d, t in zip(online, times, strict=True) if t > deadline)
        intra.append(min(float(times.max()), deadline))
        missed.append(late)
        uploads += (len(online) - len(late)) * num_bytes
    return GroupTiming(
        group_id=group.group_id,
        intra_round_s=tuple(intra),
        group_s=math.fsum(intra),
        upload_bytes=uploads,
        download_bytes=group.intra_rounds * len(online) * down_bytes,
        device_step_s={d.device_id: float(s) for d, s in zip(online, mean_step_s, strict=True)},
        missed=tuple(missed),
    )
