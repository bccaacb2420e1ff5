"""The Ray executor: long-lived Ray actors train a plan's devices, on one machine or a ``ray start`` cluster.

Each actor is one worker process that loads the base model once (``prepare_run`` with the devices it
owns) and keeps its frozen-prefix cache for their rows. Devices go to actors by their position in
the fleet (:func:`~hierfedlora.runtime.executors.placement.assign_devices`), so a device always
trains on the same actor and its cached states stay warm across rounds and re-plans.

:meth:`RayExecutor.train` splits every task's devices by actor, sends each actor one sub-task per
task (the start state travels once per actor and task, as CPU tensors), runs all actors at once and
reassembles the updates in task and device order. What a device computes does not depend on where
it trains (see ``executors.base``): the adapters and reports equal the in-process executor's, bit for
bit (``tests/runtime/test_ray_executor.py``). Each actor sets ``torch.set_num_threads`` to its CPU
count, so an actor's arithmetic does not change with the node it lands on.

Memory is checked from the cost model before anything is dispatched (placement (M1), (M2)): Ray's
``memory`` resource is admission control only, so each actor asks for what (M1) says it will hold,
and a cluster that cannot place them all is refused with the numbers instead of leaving actors
pending forever. A re-plan that adds depths (more cached states) is checked again before its first
task goes out.

A local Ray this executor starts itself keeps its workers at the driver's CPU priority
(``worker_niceness`` 0; Ray's default adds 15, which leaves the actors, the run's whole compute,
waiting behind any other process on the machine); ``init_options={"_system_config": {...}}``
overrides it. A cluster started with ``ray start`` keeps its own setting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from hierfedlora.models.catalog import resolve_model_dir
from hierfedlora.planner.errors import HierFedLoraError, InvalidInputError, Issue
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.rules import POSITIVE_INT, is_number
from hierfedlora.planner.types import CostModel, Fleet
from hierfedlora.runtime.executors.base import LocalTrainer, TrainTask
from hierfedlora.runtime.executors.placement import (
    WORKER_OVERHEAD_BYTES,
    NodeCapacity,
    WorkerMemory,
    assign_devices,
    place_workers,
    worker_memory,
)
from hierfedlora.runtime.local_training import DeviceUpdate
from hierfedlora.runtime.options import RunOptions

__all__ = ["RayExecutor"]

log = logging.getLogger(__name__)

LOCAL_WORKER_NICENESS = 0
"""The niceness a local Ray's workers add to the driver's (Ray's default is 15)."""


class _TrainerActor:
    """One Ray worker: a model and the rows (and prefix cache) of the devices it owns."""

    def __init__(self, num_threads: int) -> None:
        torch.set_num_threads(num_threads)
        self._trainer: LocalTrainer | None = None

    def load(self, plan: Plan, fleet: Fleet, options: RunOptions, device_ids: tuple[str, ...]) -> int:
        """Load the model and tokenize the owned devices' rows; the worker's process id."""
        from hierfedlora.runtime.context import prepare_run

        self._trainer = LocalTrainer(prepare_run(plan, fleet, options, device_ids=device_ids))
        return os.getpid()

    def train(self, tasks: list[TrainTask]) -> list[list[DeviceUpdate]]:
        """Train the sub-tasks in order (their devices are all this worker's)."""
        assert self._trainer is not None, "load() first"
        return [self._trainer.train_task(task) for task in tasks]


class RayExecutor:
    """Trains tasks on ``num_actors`` Ray actors; see the module docstring.

    Parameters
    ----------
    plan : Plan
        The plan the run starts with: its depths size the memory check; the actors check it
        against the fleet and the model as ``prepare_run`` does.
    fleet : Fleet
        The run's fleet. Every actor owns a share of its devices (all of them, so re-plans
        may use any); every node needs the fleet's data file at the same path.
    options : RunOptions
        The run's options (model, sequence length, seed, prefix cache).
    cost_model : CostModel
        The plan's cost model, for the memory check (placement (M1)).
    num_actors : int, optional
        Worker processes; each holds one model. Default: one per CPU of the cluster
        (``num_cpus_per_actor`` each), at most one per device of the fleet.
    address : str, optional
        A running cluster (``"HOST:6379"``, ``"auto"``); ``None`` connects to the Ray already
        initialised in this process, else starts a local one. The executor shuts down only a
        Ray it started.
    num_cpus_per_actor : int
        CPUs each actor asks for, and its torch threads.
    memory_bytes : int, optional
        Memory each actor asks Ray for; default what placement (M1) says it holds. Either way
        (M1) must fit in it.
    worker_overhead_bytes : int
        The worker process's own memory in (M1).
    init_options : dict, optional
        Extra ``ray.init`` keyword arguments when this executor starts or connects to Ray.

    Raises
    ------
    InvalidInputError
        Fields ``ray.num_actors``, ``ray.num_cpus_per_actor``, ``ray.memory_bytes`` (bad values, or
        actors that do not fit the cluster's nodes, with the numbers); what ``prepare_run`` raises
        on a worker (a data file missing or changed on that node).
    """

    def __init__(
        self,
        plan: Plan,
        fleet: Fleet,
        options: RunOptions,
        cost_model: CostModel,
        *,
        num_actors: int | None = None,
        address: str | None = None,
        num_cpus_per_actor: int = 1,
        memory_bytes: int | None = None,
        worker_overhead_bytes: int = WORKER_OVERHEAD_BYTES,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        issues = [
            Issue(f"ray.{name}", POSITIVE_INT.expected, value)
            for name, value in (("num_actors", num_actors), ("num_cpus_per_actor", num_cpus_per_actor))
            if not POSITIVE_INT.accepts(value) and not (name == "num_actors" and value is None)
        ]
        if memory_bytes is not None and not POSITIVE_INT.accepts(memory_bytes):
            issues.append(Issue("ray.memory_bytes", "None or an integer >= 1", memory_bytes))
        if issues:
            raise InvalidInputError(issues)
        try:
            import ray
        except ImportError:
            expected = "'inprocess', or 'ray' with Ray installed (pip install 'hierfedlora[ray]')"
            raise InvalidInputError([Issue("executor", expected, "ray")]) from None
        self._ray = ray
        self._started = False
        self._actors: list[Any] = []
        if not ray.is_initialized():  # "local": a fresh local Ray, never one found on the machine by chance
            settings = {"include_dashboard": False, "log_to_driver": False, **(init_options or {})}
            if address is None:  # a Ray of its own: its workers are the run's compute, not background work
                system = settings.get("_system_config") or {}
                settings["_system_config"] = {"worker_niceness": LOCAL_WORKER_NICENESS, **system}
            try:
                ray.init(address=address or "local", **settings)
            except ConnectionError as err:
                raise InvalidInputError(
                    [Issue("ray.address", "the address of a running Ray cluster", address)]
                ) from err
            self._started = address is None
        self._fleet_ids = tuple(device.device_id for device in fleet.devices)
        if num_actors is None:
            cluster_cpus = sum(node.cpus for node in self._nodes())
            num_actors = max(1, min(int(cluster_cpus // num_cpus_per_actor), len(self._fleet_ids)))
        self._owned = assign_devices(self._fleet_ids, num_actors)
        self._owner = {device: w for w, devices in enumerate(self._owned) for device in devices}
        self._samples = {d.device_id: len(rows) for d, rows in zip(fleet.devices, fleet.sample_indices, strict=False)}
        self._cost, self._options, self._batch = cost_model, options, plan.batch_size
        self._cpus, self._memory_option, self._overhead = num_cpus_per_actor, memory_bytes, worker_overhead_bytes
        self._hidden = _hidden_size(options.model)
        self._depths: dict[str, frozenset[int]] = {d: frozenset() for d in self._fleet_ids}
        self._pids: tuple[int, ...] = ()
        try:
            requests = self._check_memory({(d, g.depth) for g in plan.groups for d in g.device_ids})
            remote = ray.remote(_TrainerActor)
            self._actors = [
                remote.options(num_cpus=num_cpus_per_actor, memory=request).remote(num_cpus_per_actor)
                for request in requests
            ]
            self._pids = self._get(
                [
                    a.load.remote(plan, fleet, options, devices)
                    for a, devices in zip(self._actors, self._owned, strict=True)
                ]
            )
        except BaseException:
            self.close()
            raise
        log.info("ray executor: %d actors (pids %s) for %d devices", num_actors, self._pids, len(self._fleet_ids))
        for w, need in enumerate(self.memory()):
            log.info("ray actor %d holds about %s", w, need.describe())

    @property
    def devices_of_actor(self) -> tuple[tuple[str, ...], ...]:
        """The fleet's device ids each actor owns (placement's stable assignment)."""
        return self._owned

    @property
    def actor_pids(self) -> tuple[int, ...]:
        """The actors' process ids (on their nodes)."""
        return self._pids

    def train(self, tasks: Sequence[TrainTask]) -> list[list[DeviceUpdate]]:
        """Train all tasks at once on the actors; updates in task and device order (``Executor.train``).

        Raises
        ------
        InvalidInputError
            A task naming a device outside the fleet; depths that no longer fit (placement (M1)).
        """
        unknown = [
            Issue(f"tasks[{t}].device_ids", "devices of the executor's fleet", d)
            for t, task in enumerate(tasks)
            for d in task.device_ids
            if d not in self._owner
        ]
        if unknown:
            raise InvalidInputError(unknown)
        self._check_memory({(d, task.depth) for task in tasks for d in task.device_ids})
        work: list[list[TrainTask]] = [[] for _ in self._actors]
        slots: list[list[tuple[int, int]]] = [[] for _ in self._actors]  # (task, device position) per update
        for t, task in enumerate(tasks):
            for w in range(len(self._actors)):
                mine = [p for p, d in enumerate(task.device_ids) if self._owner[d] == w]
                if mine:
                    work[w].append(_subtask(task, mine))
                    slots[w].extend((t, p) for p in mine)
        busy = [w for w in range(len(self._actors)) if work[w]]
        answers = self._get([self._actors[w].train.remote(work[w]) for w in busy])
        results: list[list[DeviceUpdate | None]] = [[None] * len(task.device_ids) for task in tasks]
        for w, answer in zip(busy, answers, strict=True):
            updates = [update for sub in answer for update in sub]
            for (t, p), update in zip(slots[w], updates, strict=True):
                results[t][p] = update
        return [[u for u in updates if u is not None] for updates in results]

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False

    def memory(self) -> tuple[WorkerMemory, ...]:
        """Placement (M1) of every actor for the depths its devices have trained at (or will, per the plan)."""
        return tuple(
            worker_memory(
                self._cost,
                device_depths={d: self._depths[d] for d in devices if self._depths[d]},
                samples_of=self._samples,
                batch_size=self._batch,
                seq_len=self._options.max_seq_len,
                hidden_size=self._hidden,
                overhead_bytes=self._overhead,
            )
            for devices in self._owned
        )

    def _check_memory(self, pairs: set[tuple[str, int]]) -> list[int]:
        """Record (device, depth) pairs; when any is new, check (M1) and (M2). Each actor's memory request.

        With ``memory_bytes`` every actor's (M1) must fit in it; without, the actors' (M1) must fit
        the nodes' memory together (M2), against the nodes' totals: the run is assumed to have
        the cluster to itself (Ray itself leaves actors pending that others' work crowds out).
        """
        new = {(d, depth) for d, depth in pairs if depth not in self._depths[d]}
        for device, depth in new:
            self._depths[device] = self._depths[device] | {depth}
        needs = self.memory()
        requests = [self._memory_option or need.total_bytes for need in needs]
        if not new:
            return requests
        if self._memory_option is not None:
            issues = [
                Issue("ray.memory_bytes", f"at least actor {w}'s {need.describe()}", self._memory_option)
                for w, need in enumerate(needs)
                if need.total_bytes > self._memory_option
            ]
        else:
            issues = place_workers(requests, cpus_per_worker=self._cpus, nodes=self._nodes())
            detail = "; ".join(f"actor {w}: {need.describe()}" for w, need in enumerate(needs))
            issues = [dataclasses.replace(issue, hint=detail) for issue in issues]
        if issues:
            raise InvalidInputError(issues)
        return requests

    def _nodes(self) -> list[NodeCapacity]:
        return [
            NodeCapacity(
                cpus=float(n["Resources"].get("CPU", 0.0)), memory_bytes=float(n["Resources"].get("memory", 0.0))
            )
            for n in self._ray.nodes()
            if n.get("Alive")
        ]

    def _get(self, refs: list[Any]) -> tuple[Any, ...]:
        """``ray.get``, with an error a worker raised on purpose re-raised as itself."""
        try:
            return tuple(self._ray.get(refs))
        except self._ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, HierFedLoraError):
                raise err.cause from None
            raise


def _subtask(task: TrainTask, positions: Sequence[int]) -> TrainTask:
    """``task`` restricted to the devices at ``positions`` (their seeds with them)."""
    return dataclasses.replace(
        task,
        device_ids=tuple(task.device_ids[p] for p in positions),
        seeds=tuple(task.seeds[p] for p in positions),
    )


def _hidden_size(model: str) -> int:
    """The model's hidden size (the width of a cached state), read from its config offline."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_dir(model), local_files_only=True)
    size = getattr(config, "hidden_size", None)
    if not is_number(size):
        raise InvalidInputError([Issue("model", "a model whose config gives hidden_size", model)])
    return int(size)
