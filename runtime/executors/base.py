"""The executor contract: who trains a group's devices for one intra-group round.

The engine (``runtime.engine.run_plan``) keeps every piece of round logic: the groups' start
states, intra-group FedAvg, the layer-wise merge, evaluation, the simulated clock, commit-then-yield
and re-planning. What it hands out is one :class:`TrainTask` per group and intra-group round:
"train these devices of this group from this state, at this depth, for these steps, with these
seeds". An :class:`Executor` answers with one :class:`~hierfedlora.runtime.local_training.DeviceUpdate`
per device (state, mean loss, measured step seconds), in the task's device order.

The engine advances all groups in lockstep, one intra-group level at a time: level ``i`` holds a
task for every group whose ``intra_rounds`` exceeds ``i``. Groups are independent within a global
round, so an executor may train all tasks of a level at once (Ray does); the in-process executor
trains them one after another.

Where a device trains does not change what it computes: its batches and dropout come from the
task's per-device seed (``local_training.derive_seed`` of run seed, global round, group, intra round
and device position), and :class:`LocalTrainer` is the same code path everywhere.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from hierfedlora.models.adapters import AdapterState
from hierfedlora.models.base_delta import applied_base_delta
from hierfedlora.runtime.batched_training import DeviceBatching, batching_supported, train_devices_batched
from hierfedlora.runtime.context import RunContext
from hierfedlora.runtime.forward import Forward
from hierfedlora.runtime.local_training import DeviceUpdate, train_device
from hierfedlora.runtime.memory import release_freed_memory
from hierfedlora.runtime.token_packing import packing_is_exact

__all__ = ["Executor", "LocalTrainer", "TrainTask"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrainTask:
    """One intra-group round of one group: train ``device_ids`` from ``start_state``.

    Parameters
    ----------
    global_round, intra_round : int
        Where the task sits in the run (global rounds count from 1, intra rounds from 0).
    group_index : int
        Position of the group in the plan (``plan.groups[group_index]``).
    depth : int
        LoRA depth of the group: its top ``depth`` layers are trained.
    layers : tuple of int or None
        An explicit set of trained layers (FedRA-like plans); ``None`` means the top ``depth``.
    device_ids, seeds : tuple
        The devices to train and one seed per device, in the same order.
    start_state : AdapterState
        The group's state: exactly the adapter keys of its depth (or layers) and the head, already
        truncated to the group's LoRA rank where it has one.
    local_steps, batch_size : int
        Optimizer steps per device and samples per step.
    learning_rate : float
    optimizer : {"adamw", "sgd"}
    base_delta : dict of str to Tensor
        Base-weight delta (``models.base_delta``) the devices train on, relative to the pristine base:
        the run's committed delta plus the group's pending one (FedEx-LoRA, FLoRA); empty otherwise.
    train_lora_a : bool
        ``False`` keeps every ``lora_A`` frozen (FFA-LoRA); such tasks train device by device.
    """

    global_round: int
    intra_round: int
    group_index: int
    depth: int
    layers: tuple[int, ...] | None
    device_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    start_state: AdapterState
    local_steps: int
    batch_size: int
    learning_rate: float
    optimizer: str
    base_delta: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    train_lora_a: bool = True

    def __post_init__(self) -> None:
        # An internal contract (the engine builds tasks), so an assert states it.
        assert len(self.device_ids) == len(self.seeds), "one seed per device"


@runtime_checkable
class Executor(Protocol):
    """Trains the devices of the tasks it is given; the engine does everything else.

    ``train`` returns, for each task in order, one ``DeviceUpdate`` per device in the task's
    device order. ``close`` releases whatever the executor holds (processes, actors); the engine
    closes only executors it created itself.
    """

    def train(self, tasks: Sequence[TrainTask]) -> list[list[DeviceUpdate]]: ...

    def close(self) -> None: ...


class LocalTrainer:
    """Trains tasks on one process's :class:`RunContext` (the model and the rows of its devices).

    The in-process executor is a loop over it; a Ray actor or a Flower ClientApp builds one over
    the devices it owns, so every executor runs the same training code.
    """

    def __init__(self, context: RunContext, batching: DeviceBatching | None = None) -> None:
        self.context = context
        self.batching = batching
        self._packs: bool | None = None

    def _attention_mask(self) -> torch.Tensor | None:
        """The data's attention mask when batched steps pack tokens (``runtime.token_packing``), else ``None``."""
        if self.batching is None:
            return None
        if self._packs is None:
            self._packs = self.batching.pack_tokens and packing_is_exact(self.context.model, self.context.data)
            log.info(
                "token packing %s: batched steps' frozen linear layers compute %s",
                "on" if self._packs else "off",
                "real tokens only" if self._packs else "padding too",
            )
        return self.context.data.attention_mask if self._packs else None

    def train_task(self, task: TrainTask) -> list[DeviceUpdate]:
        """Train every device of ``task`` from its start state; one update per device, in order.

        With a :class:`~hierfedlora.runtime.batched_training.DeviceBatching` of ``max_devices > 1``
        (and a model it supports), devices train in batched chunks (same math, other rounding).
        """
        forward = self.context.forward_for(task.depth, task.layers)
        with applied_base_delta(self.context.model.peft_model, task.base_delta):
            return self._train(task, forward)

    def _train(self, task: TrainTask, forward: Forward) -> list[DeviceUpdate]:
        chunk = self.batching.chunk_size(task.batch_size, task.depth) if self.batching else 1
        batched = task.train_lora_a and batching_supported(self.context.model)  # batched trains every factor
        if chunk > 1 and len(task.device_ids) > 1 and batched:
            updates: list[DeviceUpdate] = []
            for start in range(0, len(task.device_ids), chunk):
                updates += train_devices_batched(
                    self.context.model,
                    forward,
                    task.start_state,
                    [self.context.device_rows[d] for d in task.device_ids[start : start + chunk]],
                    self.context.data.labels,
                    seeds=task.seeds[start : start + chunk],
                    local_steps=task.local_steps,
                    batch_size=task.batch_size,
                    learning_rate=task.learning_rate,
                    optimizer=task.optimizer,
                    attention_mask=self._attention_mask(),
                )
            release_freed_memory()  # the chunks' freed activations would stay resident (runtime.memory)
            return updates
        updates = [
            train_device(
                self.context.model,
                forward,
                task.start_state,
                self.context.device_rows[device_id],
                local_steps=task.local_steps,
                batch_size=task.batch_size,
                learning_rate=task.learning_rate,
                optimizer=task.optimizer,
                seed=seed,
                train_lora_a=task.train_lora_a,
            )
            for device_id, seed in zip(task.device_ids, task.seeds, strict=True)
        ]
        release_freed_memory()
        return updates
