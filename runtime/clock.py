"""The simulated clock: a global round's time and traffic from the planner's own cost formulas.

The runtime never invents a time: it evaluates ``planner.costs`` (C5)-(C8) for the plan it executes,
so with no noise the clock reproduces the planner's ``predicted_round_time_s`` exactly.

(K1) Noise-free round (``noise = 0``). For group ``k`` with depth ``d_k``, ``tau_k`` intra-group rounds
and ``I_k`` local steps::

    t_k   = costs.intra_round_time_s(...)                       (C5)
    G_k   = tau_k * t_k
    t_glob = costs.global_aggregation_s(depths, ...)            (C6)
    T     = costs.round_time_s([t_k], [tau_k], t_glob)          (C7)

(K2) Noisy round (``noise = sigma > 0``). Every local step of device ``i`` in intra-group round ``r`` is
scaled by its own ``X ~ LogNormal(-sigma^2 / 2, sigma)`` (mean one, so the clock is unbiased per step);
exchanges are not scaled::

    t_{k,r} = max_i ( step_i(d_k) * sum_{j < I_k} X_{r,i,j} + exchange_i(d_k) )
    G_k     = sum_{r < tau_k} t_{k,r}
    T       = max_k G_k + t_glob

    Draws come from the caller's generator, group by group in plan order, as an array of shape
    ``(tau_k, |k|, I_k)``, so a seed fixes the clock.

(K3) Traffic of group ``k`` per global round, each way (all its devices)::

    upload_k = download_k = tau_k * |k| * costs.group_adapter_bytes(group_k)     (so up + down is C8)

(K4) Faults (``runtime.faults``). Offline devices are left out of their group (no time, no bytes); a
straggler's steps take ``slowdown`` times longer; with a deadline quantile q, intra round r of group k
closes at ``D_{k,r} = quantile_q(t_{k,r,i} over its online devices i)``, devices with ``t > D`` miss it
(their uploads are not counted), and the round takes ``min(max_i t_{k,r,i}, D_{k,r})``::

    G_k = sum_r min(max_i t_{k,r,i}, D_{k,r}),   T = max_k G_k + t_glob(groups with a device online)

    Noise factors are drawn as in (K2), over the online devices only.

(K5) A ``sequential`` group (FedGSP) passes its state from device to device: its intra round lasts
the sum of its devices' times, ``t_{k,r} = sum_i (...)``, in (K1), (K2) and (K4) alike; a deadline
does not cut a chain (nobody misses it).

    Under an aggregation rule other than FedAvg, ``planner.rule_costs`` (C9) gives one exchange's upload
    and download apart (FFA-LoRA halves both, FedEx-LoRA adds the dense residual to the download,
    FLoRA's download stacks the group's ``|k|`` devices; at (C6) the server stacks ``K`` groups).

    ``group_adapter_bytes`` is ``adapter_bytes(d_k)`` unless the group sets ``layers`` (only those
    travel) or ``lora_rank`` (a fraction of each layer travels); exchanges (C3) and the global
    aggregation (C6) move the same bytes. Step times stay depth-based (``costs.py`` (C2)).

The records the clock returns live in ``runtime.round_timing``; the faulty round (K4) in ``runtime.clock_faults``.

Examples
--------
>>> clock = SimClock()
>>> clock.advance(2.5).advance(1.0).now_s
3.5
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping

import numpy as np

from hierfedlora.planner import costs
from hierfedlora.planner.errors import InvalidInputError, Issue, raise_if_any
from hierfedlora.planner.outcomes import Group, Plan
from hierfedlora.planner.plan_checks import check_plan_groups
from hierfedlora.planner.rules import FINITE_NON_NEGATIVE, FINITE_POSITIVE, POSITIVE_INT
from hierfedlora.planner.types import CostModel, DeviceProfile
from hierfedlora.runtime.clock_faults import _faulty_round
from hierfedlora.runtime.round_timing import GroupTiming, RoundTiming, _rule_bytes

__all__ = ["GroupTiming", "RoundTiming", "SimClock", "global_round_time_s"]


@dataclasses.dataclass(frozen=True, slots=True)
class SimClock:
    """Simulated seconds since the run began; the checkpoint saves ``now_s``.

    Raises
    ------
    InvalidInputError
        If ``now_s`` (or an advance) is not a finite number >= 0.
    """

    now_s: float = 0.0

    def __post_init__(self) -> None:
        if not FINITE_NON_NEGATIVE.accepts(self.now_s):
            raise InvalidInputError([Issue("now_s", FINITE_NON_NEGATIVE.expected, self.now_s)])

    def advance(self, seconds: float) -> SimClock:
        """A clock ``seconds`` later (``seconds`` finite and >= 0)."""
        if not FINITE_NON_NEGATIVE.accepts(seconds):
            raise InvalidInputError([Issue("seconds", FINITE_NON_NEGATIVE.expected, seconds)])
        return SimClock(self.now_s + seconds)


def _check_inputs(
    plan: Plan,
    cost_model: CostModel,
    devices_by_id: Mapping[str, DeviceProfile],
    numbers: Mapping[str, tuple[object, str]],
    rng: np.random.Generator | None,
) -> None:
    rules = {"positive_int": POSITIVE_INT, "positive": FINITE_POSITIVE, "non_negative": FINITE_NON_NEGATIVE}
    issues = [
        Issue(name, rules[kind].expected, value)
        for name, (value, kind) in numbers.items()
        if not rules[kind].accepts(value)
    ]
    noise = numbers["noise"][0]
    if FINITE_NON_NEGATIVE.accepts(noise) and noise != 0 and not isinstance(rng, np.random.Generator):
        issues.append(Issue("rng", "a numpy Generator when noise > 0 (seed it for a reproducible clock)", rng))
    missing = [d for d in plan.device_ids if d not in devices_by_id]
    if missing:
        issues.append(Issue("devices_by_id", "a profile for every device in the plan", f"none for {missing}"))
    issues += [issue.with_prefix("plan") for issue in check_plan_groups(plan, num_layers=cost_model.num_layers)]
    raise_if_any(issues)


def global_round_time_s(
    plan: Plan,
    cost_model: CostModel,
    devices_by_id: Mapping[str, DeviceProfile],
    *,
    batch_size: int | None = None,
    backhaul_mbps: float,
    server_ingress_mbps: float | None = None,
    intra_latency_s: float,
    global_latency_s: float,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
    offline: Collection[str] = frozenset(),
    slowdown: Mapping[str, float] | None = None,
    deadline_quantile: float | None = None,
    aggregation: str = "fedavg",
    dense_bytes_per_layer: int | None = None,
) -> RoundTiming:
    """Time and traffic of one global round of ``plan`` on the simulated clock (K1-K4).

    Parameters
    ----------
    plan : Plan
        Groups with depth, intra-group rounds and local steps.
    cost_model : CostModel
        The measured costs the plan was made from.
    devices_by_id : mapping of str to DeviceProfile
        A profile for every device in the plan (extra devices are ignored).
    batch_size : int or None
        Samples per local step; ``None`` uses ``plan.batch_size``.
    backhaul_mbps : float
        Group aggregator to server link (megabits per second).
    server_ingress_mbps : float or None
        The server link all aggregators share (``planner.costs`` (C6)); ``None`` never limits.
    intra_latency_s, global_latency_s : float
        Fixed latency of an intra-group and of the global aggregation (seconds).
    noise : float
        Sigma of the mean-one lognormal factor on every local step (0: the prediction exactly).
    rng : numpy.random.Generator or None
        Source of the noise; required when ``noise > 0``.
    offline, slowdown, deadline_quantile
        The round's faults (K4): devices offline, step-time factors of stragglers, and the
        per-intra-round deadline quantile (``None``: no deadline).
    aggregation : str
        The run's aggregation rule: what travels each way (``planner.costs`` (C9)); devices of a
        group stack ``|k|`` inputs (FLoRA), the server ``K`` groups; in a round with faults (K4),
        the inputs that arrive.
    dense_bytes_per_layer : int or None
        Bytes of one layer's dense target matrices (FedEx-LoRA's residual); ``None`` takes the cost
        model's ``dense_bytes_per_layer`` (``fedex`` needs one of the two).

    Raises
    ------
    InvalidInputError
        A plan device without a profile, a group deeper than the model, a number outside its rule,
        or ``noise > 0`` without a generator. All at once.
    """
    batch = plan.batch_size if batch_size is None else batch_size
    numbers = {
        "batch_size": (batch, "positive_int"),
        "backhaul_mbps": (backhaul_mbps, "positive"),
        "intra_latency_s": (intra_latency_s, "non_negative"),
        "global_latency_s": (global_latency_s, "non_negative"),
        "noise": (noise, "non_negative"),
    }
    _check_inputs(plan, cost_model, devices_by_id, numbers, rng)
    if offline or slowdown or deadline_quantile is not None:
        return _faulty_round(
            plan,
            cost_model,
            devices_by_id,
            batch,
            backhaul_mbps,
            intra_latency_s,
            global_latency_s,
            noise,
            rng,
            frozenset(offline),
            dict(slowdown or {}),
            deadline_quantile,
            aggregation,
            dense_bytes_per_layer,
            server_ingress_mbps,
        )
    global_bytes = [
        _rule_bytes(cost_model, g, aggregation, len(plan.groups), dense_bytes_per_layer) for g in plan.groups
    ]
    global_s = costs.global_aggregation_s(
        cost_model,
        [g.depth for g in plan.groups],
        backhaul_mbps=backhaul_mbps,
        latency_s=global_latency_s,
        num_bytes=[up for up, _ in global_bytes],
        server_ingress_mbps=server_ingress_mbps,
        download_bytes=None if all(up == down for up, down in global_bytes) else [down for _, down in global_bytes],
    )
    timings = tuple(
        _group_timing(
            cost_model,
            [devices_by_id[d] for d in g.device_ids],
            g,
            batch,
            intra_latency_s,
            noise,
            rng,
            _rule_bytes(cost_model, g, aggregation, len(g.device_ids), dense_bytes_per_layer),
        )
        for g in plan.groups
    )
    if noise > 0:
        round_s = max(t.group_s for t in timings) + global_s
    else:  # (C7) itself, so the noise-free clock is the planner's prediction to the last bit
        round_s = costs.round_time_s(
            [t.intra_round_s[0] for t in timings], [g.intra_rounds for g in plan.groups], global_s
        )
    return RoundTiming(groups=timings, global_aggregation_s=global_s, round_s=round_s)


def _group_timing(
    cost_model: CostModel,
    members: list[DeviceProfile],
    group: Group,
    batch_size: int,
    latency_s: float,
    noise: float,
    rng: np.random.Generator | None,
    traffic: tuple[int, int],
) -> GroupTiming:
    """(K1) or (K2) for one group, and its traffic (K3); ``traffic`` is one exchange's (up, down) bytes."""
    step_s = np.array(
        [
            costs.step_time_s(cost_model, compute_scale=d.compute_scale, depth=group.depth, batch_size=batch_size)
            for d in members
        ]
    )
    mean_step_s = step_s
    num_bytes, down_bytes = traffic
    download = None if down_bytes == num_bytes else down_bytes  # None: the symmetric formula, bit for bit
    if noise > 0 and rng is not None:
        exchange_s = np.array(
            [
                costs.exchange_time_s(
                    cost_model, d, depth=group.depth, latency_s=latency_s, num_bytes=num_bytes, download_bytes=download
                )
                for d in members
            ]
        )
        size = (group.intra_rounds, len(members), group.local_steps)
        factors = rng.lognormal(mean=-(noise**2) / 2, sigma=noise, size=size)  # mean one per step
        device_s = step_s * factors.sum(axis=2) + exchange_s  # [intra round, device]
        mean_step_s = step_s * factors.mean(axis=(0, 2))
        per_round = [math.fsum(row) for row in device_s] if group.sequential else device_s.max(axis=1)
        intra = tuple(float(t) for t in per_round)
        group_s = math.fsum(intra)
    else:
        t_k = costs.intra_round_time_s(
            cost_model,
            members,
            depth=group.depth,
            local_steps=group.local_steps,
            batch_size=batch_size,
            latency_s=latency_s,
            num_bytes=num_bytes,
            download_bytes=download,
            sequential=group.sequential,
        )
        intra, group_s = (t_k,) * group.intra_rounds, t_k * group.intra_rounds
    exchanges = group.intra_rounds * len(members)
    return GroupTiming(
        group_id=group.group_id,
        intra_round_s=intra,
        group_s=group_s,
        upload_bytes=exchanges * num_bytes,
        download_bytes=exchanges * down_bytes,
        device_step_s={d.device_id: float(s) for d, s in zip(members, mean_step_s, strict=True)},
        missed=((),) * group.intra_rounds,  # nobody misses a round without a deadline
    )
