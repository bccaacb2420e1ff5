"""(C9) of ``planner.costs``: what one exchange moves under an aggregation rule, and what a plan then moves.

The rules (``runtime.aggregation_rules``) move other bytes than FedAvg's adapters each way: FFA-LoRA only
``B`` (half), FedEx-LoRA adds its dense residual to every download, FLoRA's download stacks the ``n`` inputs
it aggregates (a group's devices; at the server the ``K`` groups). :func:`rule_bytes` is the formula
(notation: ``planner.costs``), :func:`exchange_bytes` applies it at a depth, :func:`group_exchange_bytes`
to a plan's group. The simulated clock (``runtime.clock``) charges through :func:`group_exchange_bytes`;
the planner prices a :class:`PlanningProblem` (``aggregation``) through :func:`exchange_bytes` and the
helpers below, so a plan's predicted round, traffic and backhaul under a rule are the clock's.

Examples
--------
>>> cm = CostModel(model_name="toy", num_layers=2, batch_size=4, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.01, 0.01), layer_backward_s=(0.02, 0.02),
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1000, head_bytes=10,
...     activation_bytes_per_sample_per_layer=10, optimizer_bytes_per_layer=2000,
...     base_model_bytes=100, dense_bytes_per_layer=50_000)
>>> exchange_bytes(cm, depth=2, aggregation="flora", num_inputs=4)  # 2010 up; 4 x 2000 + 10 down
(2010, 8010)
>>> exchange_bytes(cm, depth=1, aggregation="fedex")  # 1010 up; 1010 + 1 x 50,000 down
(1010, 51010)
"""

from __future__ import annotations

from collections.abc import Sequence

from hierfedlora.planner import costs
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.outcomes import Group
from hierfedlora.planner.types import AGGREGATION_RULES, CostModel, PlanningProblem

__all__ = [
    "exchange_bytes",
    "group_exchange_bytes",
    "predicted_backhaul_bytes",
    "predicted_global_aggregation_s",
    "predicted_group_traffic_bytes",
    "problem_exchange_bytes",
    "rule_bytes",
]


def rule_bytes(
    cost: CostModel,
    num_bytes: int,
    *,
    aggregation: str = "fedavg",
    num_layers: int = 1,
    num_inputs: int = 1,
    dense_bytes_per_layer: int | None = None,
) -> tuple[int, int]:
    """(C9) Upload and download bytes of one exchange of ``num_bytes`` (C2) under ``aggregation``.

    ``num_layers`` is ``m`` (the trained layers, for FedEx-LoRA's residual), ``num_inputs`` the ``n``
    FLoRA stacks, ``dense_bytes_per_layer`` the ``D`` FedEx-LoRA needs.

    Raises
    ------
    InvalidInputError
        An unknown rule; ``fedex`` without ``dense_bytes_per_layer``.

    Examples
    --------
    >>> cm = CostModel(model_name="toy", num_layers=2, batch_size=4, seq_len=8,
    ...     embedding_forward_s=0.0, layer_forward_s=(0.01, 0.01), layer_backward_s=(0.02, 0.02),
    ...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1000, head_bytes=10,
    ...     activation_bytes_per_sample_per_layer=10, optimizer_bytes_per_layer=2000,
    ...     base_model_bytes=100)
    >>> rule_bytes(cm, 2010, aggregation="ffa"), rule_bytes(cm, 2010, aggregation="flora", num_inputs=3)
    ((1010, 1010), (2010, 6010))
    >>> rule_bytes(cm, 2010, aggregation="fedex", num_layers=2, dense_bytes_per_layer=50_000)
    (2010, 102010)
    """
    lora = num_bytes - cost.head_bytes
    if aggregation in ("fedavg", "lora-fair", "hetlora"):
        return num_bytes, num_bytes
    if aggregation == "ffa":
        half = round(lora / 2) + cost.head_bytes
        return half, half
    if aggregation == "flora":
        return num_bytes, num_inputs * lora + cost.head_bytes
    if aggregation == "fedex":
        if dense_bytes_per_layer is None:
            raise InvalidInputError([Issue("dense_bytes_per_layer", "the bytes of one layer's target matrices", None)])
        return num_bytes, num_bytes + num_layers * dense_bytes_per_layer
    raise InvalidInputError([Issue("aggregation", f"one of {', '.join(AGGREGATION_RULES)}", aggregation)])


def exchange_bytes(
    cost: CostModel,
    *,
    depth: int,
    aggregation: str = "fedavg",
    num_inputs: int = 1,
    num_trained_layers: int | None = None,
    lora_rank: int | None = None,
    dense_bytes_per_layer: int | None = None,
) -> tuple[int, int]:
    """(C2) then (C9): upload and download bytes of one exchange at ``depth`` under ``aggregation``.

    ``num_inputs`` is what the aggregate stacks (FLoRA): a group's devices, or at (C6) the groups;
    ``dense_bytes_per_layer`` defaults to ``cost.dense_bytes_per_layer``.

    Raises
    ------
    InvalidInputError
        As :func:`rule_bytes`: an unknown rule, ``fedex`` without the dense bytes.
    """
    layers = depth if num_trained_layers is None else num_trained_layers
    return rule_bytes(
        cost,
        costs.adapter_bytes(cost, depth=depth, num_trained_layers=num_trained_layers, lora_rank=lora_rank),
        aggregation=aggregation,
        num_layers=layers,
        num_inputs=num_inputs,
        dense_bytes_per_layer=cost.dense_bytes_per_layer if dense_bytes_per_layer is None else dense_bytes_per_layer,
    )


def group_exchange_bytes(
    cost: CostModel,
    group: Group,
    *,
    aggregation: str = "fedavg",
    num_inputs: int = 1,
    dense_bytes_per_layer: int | None = None,
) -> tuple[int, int]:
    """:func:`exchange_bytes` of a plan's group: its ``layers`` (or ``depth``) at its ``lora_rank`` (C2)."""
    return exchange_bytes(
        cost,
        depth=group.depth,
        aggregation=aggregation,
        num_inputs=num_inputs,
        num_trained_layers=None if group.layers is None else len(group.layers),
        lora_rank=group.lora_rank,
        dense_bytes_per_layer=dense_bytes_per_layer,
    )


def problem_exchange_bytes(problem: PlanningProblem, *, depth: int, num_inputs: int) -> tuple[int, int]:
    """:func:`exchange_bytes` at ``depth`` under ``problem.aggregation`` with its cost model's dense bytes."""
    return exchange_bytes(problem.cost_model, depth=depth, aggregation=problem.aggregation, num_inputs=num_inputs)


def predicted_global_aggregation_s(problem: PlanningProblem, depths: Sequence[int]) -> float:
    """(C6) of groups at ``depths`` under ``problem.aggregation``: the server stacks ``K = len(depths)`` groups."""
    by_depth = {d: problem_exchange_bytes(problem, depth=d, num_inputs=len(depths)) for d in set(depths)}
    pairs = [by_depth[d] for d in depths]
    return costs.global_aggregation_s(
        problem.cost_model,
        depths,
        backhaul_mbps=problem.backhaul_mbps,
        latency_s=problem.global_latency_s,
        num_bytes=[up for up, _ in pairs],
        server_ingress_mbps=problem.server_ingress_mbps,
        download_bytes=None if all(up == down for up, down in pairs) else [down for _, down in pairs],
    )


def predicted_group_traffic_bytes(problem: PlanningProblem, *, num_devices: int, depth: int, intra_rounds: int) -> int:
    """(C8) under ``problem.aggregation``: what a group of ``num_devices`` moves per global round."""
    up, down = problem_exchange_bytes(problem, depth=depth, num_inputs=num_devices)
    return costs.group_traffic_bytes(
        problem.cost_model,
        num_devices=num_devices,
        depth=depth,
        intra_rounds=intra_rounds,
        num_bytes=up,
        download_bytes=None if up == down else down,
    )


def predicted_backhaul_bytes(problem: PlanningProblem, depths: Sequence[int]) -> int:
    """(C6b) under ``problem.aggregation``: the server stacks ``K = len(depths)`` groups (FLoRA)."""
    pairs = [problem_exchange_bytes(problem, depth=d, num_inputs=len(depths)) for d in depths]
    return costs.backhaul_traffic_bytes(
        problem.cost_model,
        depths,
        num_bytes=[up for up, _ in pairs],
        download_bytes=[down for _, down in pairs],
    )
