"""Heterogeneous-LoRA baselines as plans: HetLoRA (ranks by capability) and FedRA (random layers).

Both aggregate flatly, as ``legend`` does: groups whose devices share a setting, each with
``intra_rounds = 1``, so the server's sample-weighted key-wise merge (``runtime.aggregation`` (A2))
is FedAvg over the devices.

*Capability classes.* Devices are ranked by one full-depth local round each alone (local steps plus
the adapter exchange, ``checks.device_round_times_s``, the figure LEGEND uses) and split at the 1/3
and 2/3 quantiles of those times: class 0 (fastest) to class 2 (slowest); equal times share a
class, empty classes are dropped.

*HetLoRA* (Cho et al., 2024). One group per class, full depth, ``intra_rounds = 1``; class ``c``
trains rank ``R, R // 2, R // 4`` (at least 1) of the cost model's ``R = lora_rank``; the fastest
class gets the run's full rank (``lora_rank = None``). A device receives the global adapters
truncated to its rank and trains inside the full-rank tensors (``models.adapters.truncate_rank``);
the zero-padded states then merge key by key with sample weights, HetLoRA's zero-padding
aggregation. Left out: HetLoRA's rank self-pruning (a device shrinking its own rank when the
trailing components' norm is small) and its sparsity-weighted aggregation (weights by the norm of
each device's update); plain sample weights are used. Both come with the run's ``hetlora``
aggregation rule (``runtime.aggregation_rules``, ``runtime.rank_pruning``; ``hetlora@hetlora`` in a preset).

*FedRA* (Su et al., 2023). One group per device, ``intra_rounds = 1``. Every global round each
device gets a fresh random set of layers drawn from the top ``D`` layers (``D`` the deepest depth
every device holds in memory), ``D, D // 2, D // 4`` layers (at least 1) by capability class;
``depth = L - min(layers)``. :func:`fedra_plan` draws round ``r``'s sets from
``numpy.random.default_rng([seed, r])``, device by device in fleet order, so the same seed gives
the same allocations; :class:`FedraReplanner` hands the runtime round ``r + 1``'s plan after round
``r``. Simplified: FedRA's allocation matrix is drawn per device independently, not balanced
across layers.

*Predictions.* Priced with ``costs.py``: compute by depth (backward reaches the lowest trained
layer), traffic by what travels (``costs.group_adapter_bytes``: only the listed layers, at the
group's rank). Progress uses the convergence model (M1) with the number of *trained* layers in place
of the depth (FedRA's sparse layers learn as that many layers would); rank does not enter it (the
model has no rank term). Like the other fixed constructions, these ignore the budgets and say in
``reason`` when they break one.

Examples
--------
>>> from hierfedlora.planner.types import CostModel, DeviceProfile, PlanningProblem
>>> cost = CostModel(model_name="toy", num_layers=4, batch_size=1, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.5,) * 4, layer_backward_s=(1.0,) * 4,
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1_000_000, head_bytes=0,
...     activation_bytes_per_sample_per_layer=1, optimizer_bytes_per_layer=0,
...     base_model_bytes=1_000_000)
>>> devices = tuple(DeviceProfile(device_id=f"d{i}", label_counts=(10, 10), compute_scale=s,
...     memory_bytes=2**30, uplink_mbps=16.0, downlink_mbps=16.0) for i, s in enumerate([1.0, 2.0, 4.0]))
>>> problem = PlanningProblem(devices=devices, cost_model=cost, local_steps=1, intra_latency_s=0.0,
...     global_latency_s=0.0, backhaul_mbps=8.0)
>>> [(g.device_ids, g.depth, g.lora_rank) for g in hetlora_plan(problem).groups]
[(('d0',), 4, None), (('d1',), 4, 4), (('d2',), 4, 2)]
>>> [len(g.layers) for g in fedra_plan(problem, global_round=1, seed=0).groups]
[4, 2, 1]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np

from hierfedlora.planner import convergence, costs, skew
from hierfedlora.planner.checks import BUDGET_TOLERANCE, device_round_times_s
from hierfedlora.planner.grouping import grouping_objective
from hierfedlora.planner.io import sha256_of
from hierfedlora.planner.outcomes import Group, Plan, RoundReport, SolveStatus
from hierfedlora.planner.plan import devices_sha256
from hierfedlora.planner.rule_costs import group_exchange_bytes
from hierfedlora.planner.types import PlanningProblem

__all__ = [
    "FedraReplanner",
    "capability_classes",
    "constructed_plan",
    "fedra_plan",
    "full_depth",
    "hetlora_plan",
    "priced_group",
    "rule_exchange",
]

NUM_CLASSES = 3
"""Capability classes (fastest first); class ``c`` gets ``1 / 2**c`` of the rank or of the layers."""


def full_depth(problem: PlanningProblem) -> tuple[int, str]:
    """The deepest depth choice every device holds, and a note for ``reason`` when it is not the deepest choice."""
    cost, batch = problem.cost_model, problem.effective_batch_size
    smallest = min(device.memory_bytes for device in problem.devices)
    choices = problem.effective_depth_choices
    held = [d for d in choices if costs.peak_memory_bytes(cost, depth=d, batch_size=batch) <= smallest]
    depth = held[-1] if held else choices[0]  # callers check first that the shallowest choice fits
    if depth == choices[-1]:
        return depth, ""
    return depth, f" (full depth {choices[-1]} exceeds some device's memory; {depth} is the deepest every device holds)"


def capability_classes(problem: PlanningProblem) -> tuple[tuple[int, ...], ...]:
    """Device positions by capability class, fastest class first (module docstring); no class is empty."""
    round_s = device_round_times_s(problem)[:, -1]  # one full-depth local round, each device alone
    cuts = np.quantile(round_s, [c / NUM_CLASSES for c in range(1, NUM_CLASSES)])
    labels = np.searchsorted(cuts, round_s * (1 - BUDGET_TOLERANCE), side="left")  # t <= cut: that class
    return tuple(tuple(int(i) for i in np.flatnonzero(labels == c)) for c in range(NUM_CLASSES) if (labels == c).any())


def _share(full: int, class_idx: int) -> int:
    return max(1, full // 2**class_idx)


def hetlora_plan(problem: PlanningProblem, *, depth: int | None = None, note: str = "") -> Plan:
    """HetLoRA's plan: a group per capability class at ``depth`` (default: full depth), ranks by class."""
    started = time.perf_counter()
    depth = full_depth(problem)[0] if depth is None else depth
    classes = capability_classes(problem)
    ranks = [None if c == 0 else _share(problem.cost_model.lora_rank, c) for c in range(len(classes))]
    groups = [
        priced_group(problem, k, members, depth=depth, lora_rank=rank)
        for k, (members, rank) in enumerate(zip(classes, ranks, strict=True))
    ]
    shown = [problem.cost_model.lora_rank if r is None else r for r in ranks]
    reason = (
        f"HetLoRA-like: {len(classes)} capability classes (terciles of full-depth local rounds), ranks {shown} "
        f"fastest first, depth {depth}, intra_rounds 1; no self-pruning, sample-weighted zero-padding merge{note}"
    )
    return constructed_plan(problem, classes, groups, method="hetlora", reason=reason, started=started)


def fedra_plan(
    problem: PlanningProblem,
    *,
    global_round: int,
    seed: int,
    parent_plan_id: str | None = None,
    depth: int | None = None,
    note: str = "",
) -> Plan:
    """FedRA's plan for ``global_round``: one group per device, a random layer set each, seeded by ``(seed, round)``."""
    started = time.perf_counter()
    depth = full_depth(problem)[0] if depth is None else depth
    num_layers = problem.cost_model.num_layers
    class_of = {i: c for c, members in enumerate(capability_classes(problem)) for i in members}
    rng = np.random.default_rng([seed, global_round])
    top = np.arange(num_layers - depth, num_layers)
    groups, members = [], []
    for position in range(len(problem.devices)):
        count = _share(depth, class_of[position])
        layers = tuple(int(layer) for layer in np.sort(rng.choice(top, size=count, replace=False)))
        groups.append(priced_group(problem, position, (position,), depth=num_layers - layers[0], layers=layers))
        members.append((position,))
    reason = (
        f"FedRA-like: random layers per device for global round {global_round} (seed {seed}) from the top {depth}, "
        f"{depth}/{_share(depth, 1)}/{_share(depth, 2)} layers by capability class, intra_rounds 1{note}"
    )
    plan = constructed_plan(problem, tuple(members), groups, method="fedra", reason=reason, started=started)
    return dataclasses.replace(plan, parent_plan_id=parent_plan_id, seed=seed)


@dataclasses.dataclass(frozen=True, slots=True)
class FedraReplanner:
    """``runtime.engine.Replanner`` for FedRA: after round ``r`` the plan of round ``r + 1``, fresh layers.

    Deterministic in its inputs (the round is read off the last report), so a resumed run gets the
    same plan again. The plan keeps ``problem``'s devices; its ``parent_plan_id`` is the plan in force.
    """

    problem: PlanningProblem
    seed: int = 0

    def __call__(self, plan: Plan, reports: Sequence[RoundReport], plans: Mapping[str, Plan]) -> Plan | None:
        next_round = reports[-1].global_round + 1 if reports else 1
        depth, note = full_depth(self.problem)
        return fedra_plan(
            self.problem, global_round=next_round, seed=self.seed, parent_plan_id=plan.plan_id, depth=depth, note=note
        )


def priced_group(
    problem: PlanningProblem,
    group_id: int,
    members: Sequence[int],
    *,
    depth: int,
    layers: tuple[int, ...] | None = None,
    lora_rank: int | None = None,
    sequential: bool = False,
) -> Group:
    """A group of ``problem.devices[members]`` with its skew and its (C5) intra-round time, traffic by what it
    sends under ``problem.aggregation`` (a ``sequential`` group: a chain, the sum of its devices' times)."""
    devices = [problem.devices[i] for i in members]
    fleet_counts = np.sum([d.label_counts for d in problem.devices], axis=0)
    pooled = np.sum([d.label_counts for d in devices], axis=0)
    group = Group(
        group_id=group_id,
        device_ids=tuple(d.device_id for d in devices),
        depth=depth,
        intra_rounds=1,
        local_steps=problem.local_steps,
        label_skew=skew.label_skew(pooled, fleet_counts),
        layers=layers,
        lora_rank=lora_rank,
        sequential=sequential,
    )
    intra_s = costs.intra_round_time_s(
        problem.cost_model,
        devices,
        depth=depth,
        local_steps=problem.local_steps,
        batch_size=problem.effective_batch_size,
        latency_s=problem.intra_latency_s,
        **rule_exchange(problem, group),
        sequential=sequential,
    )
    return dataclasses.replace(group, predicted_intra_round_s=intra_s)


def rule_exchange(problem: PlanningProblem, group: Group) -> dict[str, int | None]:
    """``num_bytes`` and ``download_bytes`` of one exchange of ``group`` under ``problem.aggregation`` (C9),
    as ``costs.intra_round_time_s`` takes them (the group's devices are the inputs FLoRA stacks)."""
    up, down = group_exchange_bytes(
        problem.cost_model, group, aggregation=problem.aggregation, num_inputs=len(group.device_ids)
    )
    return {"num_bytes": up, "download_bytes": None if up == down else down}


def constructed_plan(
    problem: PlanningProblem,
    members: tuple[tuple[int, ...], ...],
    groups: Sequence[Group],
    *,
    method: str,
    reason: str,
    started: float,
) -> Plan:
    """Price the groups ((C5)-(C8), (M1)-(M4)) and stamp the plan as ``make_method_plan``'s constructions are."""
    cost, params = problem.cost_model, problem.convergence
    rule = problem.aggregation
    server = [group_exchange_bytes(cost, g, aggregation=rule, num_inputs=len(groups)) for g in groups]
    global_s = costs.global_aggregation_s(
        cost,
        [g.depth for g in groups],
        backhaul_mbps=problem.backhaul_mbps,
        latency_s=problem.global_latency_s,
        num_bytes=[up for up, _ in server],
        server_ingress_mbps=problem.server_ingress_mbps,
        download_bytes=None if all(up == down for up, down in server) else [down for _, down in server],
    )
    round_s = costs.round_time_s(
        [g.predicted_intra_round_s for g in groups], [g.intra_rounds for g in groups], global_s
    )
    counts = np.array([d.label_counts for d in problem.devices], dtype=np.int64)
    fleet, total = counts.sum(axis=0), counts.sum()
    progress = sum(
        convergence.group_progress(
            share=float(counts[list(m)].sum()) / total,
            depth=g.trained_layers,
            num_layers=cost.num_layers,
            intra_rounds=g.intra_rounds,
            skew_tv=skew.total_variation(counts[list(m)].sum(axis=0), fleet),
            params=params,
        )
        for m, g in zip(members, groups, strict=True)
    )
    rounds = convergence.rounds_to_target(progress, params)
    traffic = sum(
        costs.group_traffic_bytes(
            cost, num_devices=len(g.device_ids), depth=g.depth, intra_rounds=g.intra_rounds, **rule_exchange(problem, g)
        )
        for g in groups
    )
    reason += _broken_budgets(problem, round_s, traffic)
    objective = grouping_objective(problem, members)
    return Plan(
        groups=tuple(groups),
        predicted_round_time_s=round_s,
        predicted_rounds_to_target=rounds,
        objective_value=rounds * round_s,
        dual_bound=rounds * round_s,  # a construction: nothing to optimise
        status=SolveStatus.OPTIMAL,
        limit=None,
        solve_time_s=time.perf_counter() - started,
        solver=f"baseline:{method}",
        seed=problem.solver.seed,
        batch_size=problem.effective_batch_size,
        model_name=cost.model_name,
        cost_model_sha256=cost.model_sha256 or sha256_of(cost),
        fleet_sha256=devices_sha256(problem.devices),
        grouping_objective=objective,
        grouping_bound=objective,
        reason=reason,
        aggregation=rule,
    )


def _broken_budgets(problem: PlanningProblem, round_s: float, traffic_bytes: float) -> str:
    notes = []
    budget_s, budget_bytes = problem.round_budget_s, problem.traffic_budget_bytes
    if budget_s is not None and round_s > budget_s * (1 + BUDGET_TOLERANCE):
        notes.append(f"breaks round_budget_s = {budget_s:g} s ({round_s:.4g} s a round)")
    if budget_bytes is not None and traffic_bytes > budget_bytes * (1 + BUDGET_TOLERANCE):
        notes.append(f"breaks traffic_budget_bytes = {budget_bytes:.6g} ({traffic_bytes:.6g} a round)")
    return "".join(f"; {note}" for note in notes)
