"""One global round's training: every group's intra-group rounds through an executor, in lockstep.

For global round ``r`` the engine calls :func:`train_groups`. Level ``i`` (an intra-group round)
hands the executor one :class:`~hierfedlora.runtime.executors.base.TrainTask` per group with
``intra_rounds > i``, holding the group's devices that take part; then each of those groups aggregates
its accepted updates with the run's rule (``runtime.aggregation_rules``; default the sample-weighted
FedAvg (A1)). Faults (``runtime.faults``) remove the
offline devices and those that missed the level's deadline from the task, poison the updates of
poisoned devices, and screening rejects updates before they reach the average. A device's seed
depends on its position in the group, not on who else takes part, so a device computes the same
update whether or not others drop out.

A ``sequential`` group (FedGSP) is a chain instead: in each of its intra rounds its devices train one
after another, device ``i`` from device ``i - 1``'s state (a task of one device per link, through the
same executor, beside the other groups' tasks), and the group's state is the last accepted link's; no
rule aggregates inside it. A refused link (screening) passes its predecessor's state on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from hierfedlora.models.adapters import AdapterState, truncate_rank
from hierfedlora.models.base_delta import add_deltas
from hierfedlora.planner.outcomes import Group, Plan
from hierfedlora.runtime.aggregation_rules import AggregationRule, BaseDelta, get_rule
from hierfedlora.runtime.context import RunContext
from hierfedlora.runtime.executors.base import Executor, TrainTask
from hierfedlora.runtime.faults import FaultOptions, RoundFaults, poison_state, screen_updates
from hierfedlora.runtime.local_training import DeviceUpdate, derive_seed
from hierfedlora.runtime.options import RunOptions

__all__ = ["GroupsOutcome", "LevelObserver", "group_start_state", "train_groups"]

LevelObserver = Callable[[int, Sequence[AdapterState], Sequence[BaseDelta], Sequence[bool]], None]
"""Called after intra-group round ``level`` (1-based) of every level but the last with the groups'
current states, their pending base deltas and whether each has contributed an accepted update yet.
It must not change them (``runtime.intra_evaluation`` evaluates their merge)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupsOutcome:
    """What the groups did in one global round.

    ``states[k]`` is group k's state after its intra rounds; ``losses[k]`` its mean training loss
    over the levels where some update was accepted (``None`` if none was); ``contributed[k]``
    whether any update of group k was accepted (a group that contributed nothing is left out of
    the server's merge); ``deltas[k]`` group k's pending base delta (FedEx-LoRA, FLoRA; else empty).
    ``step_s`` maps each device that trained to its measured mean step
    seconds; ``rejected`` maps each screened-out device to the reason.
    """

    states: tuple[AdapterState, ...]
    deltas: tuple[BaseDelta, ...]
    losses: tuple[float | None, ...]
    contributed: tuple[bool, ...]
    step_s: dict[str, float]
    rejected: dict[str, str]


def group_start_state(context: RunContext, group: Group, global_state: AdapterState) -> AdapterState:
    """The global state restricted to the group's depth (or layers), truncated to its rank."""
    if group.layers is None:
        context.model.set_depth(group.depth)
    else:
        context.model.set_layers(group.layers)
    state = {key: global_state[key] for key in context.model.adapter_keys()}
    if group.lora_rank is not None:  # HetLoRA: the group trains the first lora_rank components only
        state = truncate_rank(state, group.lora_rank)
    return state


def train_groups(
    executor: Executor,
    context: RunContext,
    plan: Plan,
    global_state: AdapterState,
    options: RunOptions,
    global_round: int,
    samples_of: Mapping[str, int],
    *,
    faults: FaultOptions | None = None,
    round_faults: RoundFaults | None = None,
    missed: Sequence[Sequence[Collection[str]]] = (),
    rule: AggregationRule | None = None,
    base_delta: BaseDelta | None = None,
    after_level: LevelObserver | None = None,
) -> GroupsOutcome:
    """Every group's intra-group rounds of ``global_round``, in lockstep by level.

    Each level's accepted updates are aggregated with ``rule`` (default the run's
    ``options.aggregation``). A rule that changes the base leaves the group a pending delta, which its
    next level trains on, on top of the run's committed ``base_delta``, and which the server merges.

    ``missed[k][i]`` names group k's devices that missed the deadline of its intra round i
    (from the simulated clock); ``round_faults`` the round's offline and poisoned devices.
    ``after_level`` observes the groups between levels (never after the last).
    """
    rule = rule or get_rule(options.aggregation)
    states = [group_start_state(context, group, global_state) for group in plan.groups]
    pending: list[BaseDelta] = [{} for _ in plan.groups]
    losses: list[list[float]] = [[] for _ in plan.groups]
    step_s: dict[str, float] = {}
    rejected: dict[str, str] = {}
    offline = round_faults.offline if round_faults else frozenset()

    def screened(task: TrainTask, updates: list[DeviceUpdate]) -> tuple[list[AdapterState], list[int]]:
        """The states the task's devices send (poisoned where drawn) and the positions screening keeps."""
        if len(updates) != len(task.device_ids):
            raise RuntimeError(f"executor returned {len(updates)} updates for {len(task.device_ids)} devices")
        for device_id, update in zip(task.device_ids, updates, strict=True):
            step_s[device_id] = update.mean_step_s
        sent = [u.state for u in updates]
        if round_faults is not None and faults is not None:
            sent = [
                poison_state(task.start_state, s, round_faults.poisoned[d], faults.poison_scale)
                if d in round_faults.poisoned
                else s
                for d, s in zip(task.device_ids, sent, strict=True)
            ]
        refused = screen_updates(task.start_state, sent, norm_bound_ratio=faults.norm_bound_ratio) if faults else {}
        rejected.update({task.device_ids[p]: reason for p, reason in refused.items()})
        return sent, [p for p in range(len(sent)) if p not in refused]

    num_levels = max(group.intra_rounds for group in plan.groups)
    for intra in range(num_levels):
        parallel, chains = [], {}
        for k, group in enumerate(plan.groups):
            if intra >= group.intra_rounds:
                continue
            late = set(missed[k][intra]) if missed else set()
            taking_part = [(p, d) for p, d in enumerate(group.device_ids) if d not in offline and d not in late]
            if taking_part and group.sequential:
                chains[k] = taking_part
            elif taking_part:
                task = _task(plan, k, intra, taking_part, states[k], options, global_round)
                parallel.append(
                    dataclasses.replace(
                        task, base_delta=add_deltas(base_delta or {}, pending[k]), train_lora_a=rule.trains_lora_a
                    )
                )
        chain_losses: dict[int, list[tuple[float, float]]] = {k: [] for k in chains}
        # a chain's link i trains from link i - 1's state; the parallel groups train beside the first links
        for link in range(max((len(chain) for chain in chains.values()), default=1)):
            tasks = parallel if link == 0 else []
            tasks = tasks + [
                dataclasses.replace(
                    _task(plan, k, intra, [chain[link]], states[k], options, global_round),
                    base_delta=dict(base_delta or {}),
                    train_lora_a=rule.trains_lora_a,
                )
                for k, chain in chains.items()
                if link < len(chain)
            ]
            for task, updates in zip(tasks, executor.train(tasks) if tasks else [], strict=True):
                sent, kept = screened(task, updates)
                k = task.group_index
                if plan.groups[k].sequential:
                    if kept:  # a refused link leaves the chain's state where it was
                        states[k] = sent[0]
                        chain_losses[k].append((updates[0].mean_loss, float(samples_of[task.device_ids[0]])))
                    continue
                if not kept:
                    continue
                weights = [float(samples_of[task.device_ids[p]]) for p in kept]
                merged = rule.aggregate(states[k], [sent[p] for p in kept], weights, [pending[k]] * len(kept))
                states[k], pending[k] = merged.state, merged.base_delta
                losses[k].append(float(np.average([updates[p].mean_loss for p in kept], weights=weights)))
        for k, pairs in chain_losses.items():
            if pairs:
                losses[k].append(float(np.average([x for x, _ in pairs], weights=[w for _, w in pairs])))
        if after_level is not None and intra + 1 < num_levels:
            after_level(intra + 1, tuple(states), tuple(pending), tuple(bool(group_losses) for group_losses in losses))
    return GroupsOutcome(
        states=tuple(states),
        deltas=tuple(pending),
        losses=tuple(float(np.mean(group_losses)) if group_losses else None for group_losses in losses),
        contributed=tuple(bool(group_losses) for group_losses in losses),
        step_s=step_s,
        rejected=rejected,
    )


def _task(
    plan: Plan,
    k: int,
    intra: int,
    taking_part: list[tuple[int, str]],
    start_state: AdapterState,
    options: RunOptions,
    global_round: int,
) -> TrainTask:
    group = plan.groups[k]
    return TrainTask(
        global_round=global_round,
        intra_round=intra,
        group_index=k,
        depth=group.depth,
        layers=group.layers,
        device_ids=tuple(d for _, d in taking_part),
        seeds=tuple(derive_seed(options.seed, global_round, k, intra, p) for p, _ in taking_part),
        start_state=start_state,
        local_steps=group.local_steps,
        batch_size=plan.batch_size,
        learning_rate=options.learning_rate,
        optimizer=options.optimizer,
    )
