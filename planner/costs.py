"""Pure cost functions: a measured :class:`CostModel` scaled by a :class:`DeviceProfile`.

The planner, the verifier and the runtime's simulated clock all use these formulas, so a
plan's predicted times and the clock agree by construction.

Notation: ``L`` layers, layer ``l = 0..L-1`` from the embeddings up; depth ``d`` trains the
top ``d`` layers ``L-d..L-1``; ``b`` samples per step; ``s_i`` the device's
``compute_scale``; ``f_l``, ``g_l`` the per-sample forward and LoRA-backward seconds of
layer ``l``; ``e`` embeddings; ``h`` the head's forward + backward; ``o`` the optimizer
step per trained layer; ``a`` adapter bytes per layer; ``H`` head bytes.

(C1) Local step (seconds)::

    step_i(d) = s_i * ( b * (e + sum_{l<L} f_l + sum_{l>=L-d} g_l + h) + d * o )

    A real device runs the whole forward (its frozen prefix too) every step; backward
    stops at layer L-d. (The simulator's frozen-prefix cache is a host-side trick and
    does not change the simulated clock.) Per-sample costs scale linearly in ``b``.

(C2) Bytes exchanged per aggregation, each way::

    bytes(d) = d * a + H

    A group that trains ``m`` given layers (``Group.layers``, FedRA) sends those ``m`` layers,
    not ``d``; one that trains rank ``r`` of the full ``R = cost.lora_rank`` (``Group.lora_rank``,
    HetLoRA) sends ``r / R`` of each layer's factors (rounded to whole bytes)::

    bytes(d, m, r) = round(m * a * r / R) + H       (m = d, r = R when not given)

    :func:`group_adapter_bytes` reads ``m`` and ``r`` off a :class:`Group`; every formula below
    that moves adapters takes the bytes as an optional ``num_bytes`` (default ``bytes(d)``).
    Compute (C1) and memory (C4) stay depth-based: backward reaches the lowest trained layer
    whatever layers above it are skipped, and a smaller rank changes a step's seconds and bytes
    by a few per cent of the frozen model's (an approximation we accept).

(C3) Exchange with the group aggregator (seconds)::

    exchange_i(d) = 8 * bytes(d) / (1e6 * up_i) + 8 * bytes(d) / (1e6 * down_i) + intra_latency

(C4) Peak training memory (bytes)::

    mem(d) = base_model + d * (a + optimizer_per_layer) + 4 * H + b * (d + 1) * act

    Frozen weights, trained adapters with their gradients and optimizer state, the head
    with its gradient and two Adam moments, and activations kept for backward by the top
    ``d`` layers plus one layer's transient activations in the frozen forward.

(C5) One intra-group round of group k (local steps ``I``; the slowest member sets it)::

    t_k(d) = max_{i in k} ( I * step_i(d) + exchange_i(d) )

(C6) Global aggregation: every group aggregator sends its merged adapter to the server and
receives the merge over its backhaul link; all ``K`` aggregators share the server's own link
(``server_ingress_mbps``, both ways), so their transfers queue on it::

    t_glob = 2 * 8 * bytes(d_max) * max(1 / backhaul, K / ingress) / 1e6 + global_latency

    ``d_max`` is the deepest group's depth. Each direction lasts as long as the slower of one
    aggregator's own link and the server link carrying all ``K`` transfers. The queue is charged
    as if every aggregator moved the deepest group's adapters: exact when the groups share one
    depth, an upper bound otherwise; a cost that depends on the depth cap alone keeps the
    assignment's exact level enumeration (``planner.assignment`` (a)). With no ingress limit
    (``None``, the default) it is today's ``max_k 2 * 8 * bytes(d_k) / backhaul``: 8,000 devices
    in 800 groups cost the server no more than 80 in 8.

(C6b) Backhaul bytes per global round (all aggregators, up + down)::

    backhaul = sum_k 2 * bytes(d_k)

(C7) Global round::

    T = max_k tau_k * t_k(d_k) + t_glob

(C8) Device traffic per global round (bytes, up + down, all devices of group k)::

    traffic_k = tau_k * |k| * 2 * bytes(d_k)

(C9) Bytes per exchange under an aggregation rule (``runtime.aggregation_rules``), with
``b = bytes(d, m, r)`` of (C2), ``lora = b - H`` its LoRA part, ``m`` trained layers, ``n`` the
number of inputs the aggregate stacks (a group's devices; at (C6) the groups ``K``) and ``D`` the
bytes of one layer's dense ``(out, in)`` target matrices::

    fedavg, lora-fair, hetlora:  up = b                     down = b
    ffa (only B travels):        up = round(lora / 2) + H   down = up
    fedex (+ the residual):      up = b                     down = b + m * D
    flora (stacked factors):     up = b                     down = n * lora + H

    FFA-LoRA's half assumes square target modules (``B`` and ``A`` the same size, as for the
    attention projections of BERT-like models); FLoRA's download grows with the inputs it stacks;
    FedEx-LoRA's residual is dense. (C3) then charges ``8 * up / up_i + 8 * down / down_i`` and (C6)
    ``8 * (up + down)`` of the largest sizes; (C6b) and (C8) add ``up + down``. The rule leaves the
    compute (C1) and memory (C4) unchanged.

    ``planner.rule_costs`` implements (C9): ``rule_bytes``, ``exchange_bytes`` ((C2) then (C9) for a
    depth) and ``group_exchange_bytes`` (for a plan's group); the planner (``PlanningProblem.aggregation``:
    ``n = |k|`` inside group ``k``, ``n = K`` at (C6)) and the simulated clock (``runtime.clock``) both
    price a rule through them, so a plan's predicted round under a rule is what the clock charges for
    it. ``D`` defaults to the cost model's ``dense_bytes_per_layer``.

Examples
--------
>>> cm = CostModel(model_name="toy", num_layers=2, batch_size=4, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.01, 0.01), layer_backward_s=(0.02, 0.02),
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1000, head_bytes=0,
...     activation_bytes_per_sample_per_layer=10, optimizer_bytes_per_layer=2000,
...     base_model_bytes=100)
>>> round(step_time_s(cm, compute_scale=2.0, depth=1, batch_size=4), 4)  # 2 * 4 * (0.02 + 0.02)
0.32
>>> adapter_bytes(cm, depth=2)
2000
>>> adapter_bytes(cm, depth=2, num_trained_layers=1, lora_rank=4)  # one layer at half of rank 8
500
>>> peak_memory_bytes(cm, depth=1, batch_size=4)  # 100 + 3000 + 0 + 4 * 2 * 10
3180
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner.outcomes import Group
from hierfedlora.planner.types import AGGREGATION_RULES, CostModel, DeviceProfile

__all__ = [
    "AGGREGATION_RULES",
    "adapter_bytes",
    "backhaul_traffic_bytes",
    "group_adapter_bytes",
    "exchange_time_s",
    "global_aggregation_s",
    "group_traffic_bytes",
    "intra_round_time_s",
    "peak_memory_bytes",
    "round_time_s",
    "step_time_s",
    "step_time_table_s",
    "exchange_time_table_s",
]

MEGABIT = 1e6


def _per_sample_s(cost: CostModel, depth: int) -> float:
    top = cost.num_layers - depth
    return cost.embedding_forward_s + sum(cost.layer_forward_s) + sum(cost.layer_backward_s[top:]) + cost.head_step_s


def step_time_s(cost: CostModel, *, compute_scale: float, depth: int, batch_size: int) -> float:
    """(C1) Seconds of one local step at ``depth`` on a device ``compute_scale`` x the host."""
    return compute_scale * (batch_size * _per_sample_s(cost, depth) + depth * cost.layer_optimizer_s)


def adapter_bytes(
    cost: CostModel, *, depth: int, num_trained_layers: int | None = None, lora_rank: int | None = None
) -> int:
    """(C2) Bytes of the adapters (and head) a device sends or receives.

    ``num_trained_layers`` (default ``depth``) layers travel, each at ``lora_rank`` of the cost
    model's ``lora_rank`` (default: all of it).
    """
    layers = depth if num_trained_layers is None else num_trained_layers
    lora = layers * cost.adapter_bytes_per_layer
    if lora_rank is not None:
        lora = round(lora * lora_rank / cost.lora_rank)
    return lora + cost.head_bytes


def group_adapter_bytes(cost: CostModel, group: Group) -> int:
    """(C2) for a plan's group: its ``layers`` (or ``depth``) at its ``lora_rank`` (or full rank)."""
    num_trained = None if group.layers is None else len(group.layers)
    return adapter_bytes(cost, depth=group.depth, num_trained_layers=num_trained, lora_rank=group.lora_rank)


def exchange_time_s(
    cost: CostModel,
    device: DeviceProfile,
    *,
    depth: int,
    latency_s: float,
    num_bytes: int | None = None,
    download_bytes: int | None = None,
) -> float:
    """(C3) Upload plus download of the adapters over the device's links, plus latency.

    ``num_bytes`` (default ``adapter_bytes(cost, depth=depth)``) is what travels each way, unless
    ``download_bytes`` gives the download apart ((C9): rules whose download differs).
    """
    bits = 8.0 * (adapter_bytes(cost, depth=depth) if num_bytes is None else num_bytes)
    down_bits = bits if download_bytes is None else 8.0 * download_bytes
    return bits / (MEGABIT * device.uplink_mbps) + down_bits / (MEGABIT * device.downlink_mbps) + latency_s


def peak_memory_bytes(cost: CostModel, *, depth: int, batch_size: int) -> int:
    """(C4) Peak training memory at ``depth`` (the same on every device: it is the model's)."""
    return (
        cost.base_model_bytes
        + depth * (cost.adapter_bytes_per_layer + cost.optimizer_bytes_per_layer)
        + 4 * cost.head_bytes
        + batch_size * (depth + 1) * cost.activation_bytes_per_sample_per_layer
    )


def intra_round_time_s(
    cost: CostModel,
    devices: Sequence[DeviceProfile],
    *,
    depth: int,
    local_steps: int,
    batch_size: int,
    latency_s: float,
    num_bytes: int | None = None,
    download_bytes: int | None = None,
    sequential: bool = False,
) -> float:
    """(C5) One intra-group round: the slowest member's local steps plus its exchange of ``num_bytes``.

    A ``sequential`` group (FedGSP: each device trains from its predecessor's state) takes the *sum*
    of its members' local steps and exchanges instead of the maximum: the state passes from device
    to device, each receiving and sending it once.
    """
    times = [
        local_steps * step_time_s(cost, compute_scale=d.compute_scale, depth=depth, batch_size=batch_size)
        + exchange_time_s(cost, d, depth=depth, latency_s=latency_s, num_bytes=num_bytes, download_bytes=download_bytes)
        for d in devices
    ]
    return math.fsum(times) if sequential else max(times)


def global_aggregation_s(
    cost: CostModel,
    depths: Sequence[int],
    *,
    backhaul_mbps: float,
    latency_s: float,
    num_bytes: Sequence[int] | None = None,
    server_ingress_mbps: float | None = None,
    download_bytes: Sequence[int] | None = None,
) -> float:
    """(C6) Groups' aggregators exchange their merged adapters with the server.

    ``depths`` holds one depth per group (``K = len(depths)``); ``num_bytes`` (default
    ``adapter_bytes`` at each of ``depths``) each group's bytes, each way unless ``download_bytes``
    gives the downloads apart (C9). ``server_ingress_mbps`` is the server link all aggregators
    share (``None``: unlimited).
    """
    sizes = [adapter_bytes(cost, depth=d) for d in depths] if num_bytes is None else num_bytes
    largest = max(sizes)
    inverse_rate = 1.0 / backhaul_mbps
    if server_ingress_mbps is not None:
        inverse_rate = max(inverse_rate, len(sizes) / server_ingress_mbps)
    if download_bytes is not None:
        return 8.0 * (largest + max(download_bytes)) * inverse_rate / MEGABIT + latency_s
    return 2 * 8.0 * largest * inverse_rate / MEGABIT + latency_s


def backhaul_traffic_bytes(
    cost: CostModel,
    depths: Sequence[int],
    *,
    num_bytes: Sequence[int] | None = None,
    download_bytes: Sequence[int] | None = None,
) -> int:
    """(C6b) Bytes the group aggregators exchange with the server per global round, up plus down.

    ``num_bytes`` each way, unless ``download_bytes`` gives the downloads apart (C9).
    """
    sizes = [adapter_bytes(cost, depth=d) for d in depths] if num_bytes is None else num_bytes
    if download_bytes is not None:
        return int(sum(sizes) + sum(download_bytes))
    return int(2 * sum(sizes))


def round_time_s(intra_round_s: Sequence[float], intra_rounds: Sequence[int], global_s: float) -> float:
    """(C7) A global round: the slowest group's ``tau * t`` plus the global aggregation."""
    return max(t * tau for t, tau in zip(intra_round_s, intra_rounds, strict=True)) + global_s


def group_traffic_bytes(
    cost: CostModel,
    *,
    num_devices: int,
    depth: int,
    intra_rounds: int,
    num_bytes: int | None = None,
    download_bytes: int | None = None,
) -> int:
    """(C8) Bytes all devices of a group move per global round, up plus down (``num_bytes`` each way,
    unless ``download_bytes`` gives the download apart (C9))."""
    one_way = adapter_bytes(cost, depth=depth) if num_bytes is None else num_bytes
    if download_bytes is not None:
        return intra_rounds * num_devices * (one_way + download_bytes)
    return intra_rounds * num_devices * 2 * one_way


def step_time_table_s(
    cost: CostModel, compute_scales: NDArray[np.float64], depths: Sequence[int], batch_size: int
) -> NDArray[np.float64]:
    """(C1) for many devices at once: an ``(N, len(depths))`` array of step seconds."""
    per_depth = np.array([batch_size * _per_sample_s(cost, d) + d * cost.layer_optimizer_s for d in depths])
    return np.outer(np.asarray(compute_scales, dtype=float), per_depth)


def exchange_time_table_s(
    cost: CostModel,
    uplink_mbps: NDArray[np.float64],
    downlink_mbps: NDArray[np.float64],
    depths: Sequence[int],
    latency_s: float,
    *,
    num_bytes: Sequence[int] | None = None,
    download_bytes: Sequence[int] | None = None,
) -> NDArray[np.float64]:
    """(C3) for many devices at once: an ``(N, len(depths))`` array of exchange seconds.

    ``num_bytes`` (one per depth; default (C2) at each depth) travel each way, unless
    ``download_bytes`` (one per depth) gives the downloads apart (C9).
    """
    sizes = [adapter_bytes(cost, depth=d) for d in depths] if num_bytes is None else num_bytes
    bits = 8.0 * np.array(sizes, dtype=float)
    up_rate = 1.0 / (MEGABIT * np.asarray(uplink_mbps, dtype=float))
    down_rate = 1.0 / (MEGABIT * np.asarray(downlink_mbps, dtype=float))
    if download_bytes is None:
        return np.outer(up_rate + down_rate, bits) + latency_s
    down_bits = 8.0 * np.array(download_bytes, dtype=float)
    return np.outer(up_rate, bits) + np.outer(down_rate, down_bits) + latency_s
