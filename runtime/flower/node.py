"""The ClientApp side: a node's data and model, loaded once per process, and its two message handlers.

A node is one device. :func:`make_client_app` builds the ClientApp; its ``query`` handler answers
discovery (:class:`~hierfedlora.runtime.flower.protocol.NodeProfile`), its ``train`` handler trains the
device's LoRA at the depth the message names (top ``lora-depth`` layers, or the listed ``layers``) with
peft (:mod:`hierfedlora.models.lora`) and the same
:class:`~hierfedlora.runtime.executors.base.LocalTrainer` the in-process executor uses.

Flower runs ClientApps in long-lived processes (Ray actors in simulation, the SuperNode's ClientApp
process in deployment), one process often serving several nodes. The model is loaded once per process
and model spec, and a node's tokenized rows and frozen-prefix cache once per (run, node): both live in
module-level caches here, never in the handlers (which Flower may pickle by value).

A ``train`` message names the run's aggregation rule and carries what the engine's task carries for it:
the base delta the device trains on and whether ``lora_A`` trains (FFA-LoRA keeps it frozen). The node
trains through :class:`~hierfedlora.runtime.executors.base.LocalTrainer` with both, as the in-process
executor does, and under a rule that changes the frozen weights (FedEx-LoRA, FLoRA) it trains without
its frozen-prefix cache (``RunContext.for_rule``): states cached from the pristine base would be stale.

Two hooks let users bring their own model and data:

- ``model_fn(context, num_labels) -> ModelSpec``: the model folder and LoRA settings for a head of
  ``num_labels`` classes (default: the run config's ``model``, ``lora-rank``, ``lora-alpha``,
  ``max-seq-len``);
- ``data_fn(context) -> NodeData``: the node's texts and labels (default: :func:`partition_node_data`,
  the rows of device ``partition-id`` of the fleet ``hierfedlora fleet`` would make with the run
  config's data, partition and seed, or of the run config's ``fleet-file``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from hierfedlora.models.adapters import initial_adapter_state
from hierfedlora.models.catalog import ModelSpec, model_sha256, resolve_model_dir
from hierfedlora.models.lora import AdaptedModel, load_adapted_model
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.datasets import read_dataset
from hierfedlora.planner.types import DeviceProfile, Fleet
from hierfedlora.runtime.aggregation_rules import get_rule
from hierfedlora.runtime.context import RunContext
from hierfedlora.runtime.data import tokenize_texts
from hierfedlora.runtime.executors.base import LocalTrainer, TrainTask
from hierfedlora.runtime.flower.protocol import (
    NodeProfile,
    decode_job,
    encode_profile,
    encode_update,
)
from hierfedlora.runtime.flower.settings import AppSettings
from hierfedlora.runtime.forward import PlainForward
from hierfedlora.runtime.local_training import derive_seed, train_device
from hierfedlora.runtime.prefix_cache import PrefixCache

__all__ = ["DataFn", "ModelFn", "NodeData", "make_client_app", "partition_node_data", "settings_model_spec"]

log = logging.getLogger(__name__)

DEFAULT_UPLINK_MBPS = 20.0
DEFAULT_DOWNLINK_MBPS = 50.0
PROBE_STEPS = 2  # training steps a node times to report its measured step seconds


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeData:
    """One node's training data.

    Parameters
    ----------
    device_id : str
        The device this node is (plans name devices by id).
    texts, labels : tuple
        One text and one class position per sample.
    num_classes : int
        Classes of the whole task (the model's head size), not only those this node holds.
    profile : DeviceProfile or None
        A simulated profile (e.g. the fleet tier it was drawn from); ``None``: the node's
        ``memory-bytes``, ``uplink-mbps``, ``downlink-mbps`` and ``compute-scale`` node config,
        else its memory, default links and a compute scale derived from its measured step.
    """

    device_id: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    num_classes: int
    profile: DeviceProfile | None = None

    def __post_init__(self) -> None:
        issues = []
        if not self.texts or len(self.texts) != len(self.labels):
            issues.append(Issue("texts", f"a non-empty tuple, one per label ({len(self.labels)})", len(self.texts)))
        if any(not 0 <= label < self.num_classes for label in self.labels):
            issues.append(Issue("labels", f"class positions in 0..{self.num_classes - 1}", max(self.labels)))
        if issues:
            raise InvalidInputError(issues, "node data")

    def label_counts(self) -> tuple[int, ...]:
        """Samples per class, over all ``num_classes`` classes."""
        counts = [0] * self.num_classes
        for label in self.labels:
            counts[label] += 1
        return tuple(counts)


DataFn = Callable[[Context], NodeData]
ModelFn = Callable[[Context, int], ModelSpec]


def _settings(context: Context, defaults: Mapping[str, object] | None) -> AppSettings:
    return AppSettings.from_run_config(dict(context.run_config), defaults)


def _partition(context: Context) -> tuple[int, int]:
    config = context.node_config
    issues = [
        Issue(f"node_config[{key!r}]", "an integer (set by the simulation, or --node-config)", config.get(key))
        for key in ("partition-id", "num-partitions")
        if not isinstance(config.get(key), int)
    ]
    if not issues and not 0 <= int(config["partition-id"]) < int(config["num-partitions"]):  # type: ignore[arg-type]
        issues.append(Issue("node_config['partition-id']", "in 0..num-partitions-1", config["partition-id"]))
    if issues:
        raise InvalidInputError(issues, f"node {context.node_id}")
    return int(config["partition-id"]), int(config["num-partitions"])  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4)
def node_fleet(settings: AppSettings, num_partitions: int) -> Fleet:
    """The fleet of ``num_partitions`` devices a node's default data comes from (cached per process).

    The run config's ``fleet-file`` if set, else ``make_fleet`` with the run config's data,
    partition, tiers and seed: the fleet ``hierfedlora fleet`` writes for the same arguments, so the
    ServerApp, rebuilding it, holds the same held-out split.
    """
    from hierfedlora.planner.fleet import load_fleet, make_fleet
    from hierfedlora.planner.fleets import datasets

    if settings.fleet_file:
        return load_fleet(settings.fleet_file)
    if settings.data == "wordnet":
        data = datasets.read_wordnet()
    elif settings.data.lower().endswith(".csv"):
        data = datasets.read_csv(settings.data)
    else:
        data = datasets.read_jsonl(settings.data)
    return make_fleet(
        data,
        num_devices=num_partitions,
        partition=settings.partition,  # type: ignore[arg-type]
        alpha=settings.alpha,
        tier_mix=settings.tiers,
        test_fraction=settings.test_fraction,
        max_samples_per_device=settings.sample_cap,
        seed=settings.seed,
    )


def partition_node_data(context: Context, defaults: Mapping[str, object] | None = None) -> NodeData:
    """The default ``data_fn``: device ``partition-id`` of the run's fleet, with its tier profile.

    Raises
    ------
    InvalidInputError
        No ``partition-id``/``num-partitions`` node config, or more partitions than the fleet file's devices.
    """
    settings = _settings(context, defaults)
    index, count = _partition(context)
    fleet = node_fleet(settings, count)
    if len(fleet.devices) != count:
        issue = Issue("node_config['num-partitions']", f"the fleet file's {len(fleet.devices)} devices", count)
        raise InvalidInputError([issue], f"node {context.node_id}")
    assert fleet.dataset is not None  # make_fleet and load_fleet's checks
    texts = read_dataset(fleet.dataset)
    rows = fleet.sample_indices[index]
    return NodeData(
        device_id=fleet.devices[index].device_id,
        texts=tuple(texts.texts[r] for r in rows),
        labels=tuple(texts.labels[r] for r in rows),
        num_classes=len(fleet.class_names),
        profile=fleet.devices[index],
    )


def settings_model_spec(context: Context, num_labels: int, defaults: Mapping[str, object] | None = None) -> ModelSpec:
    """The default ``model_fn``: the run config's model and LoRA settings, a head of ``num_labels`` classes."""
    settings = _settings(context, defaults)
    return ModelSpec(
        path=settings.model,
        num_labels=num_labels,
        lora_rank=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        max_seq_len=settings.max_seq_len,
    )


@dataclasses.dataclass(slots=True)
class _Node:
    """What a process keeps per (run, node): its data, its run context, its trainer and model hash."""

    data: NodeData
    context: RunContext
    trainer: LocalTrainer
    model_sha256: str
    seed: int
    batch_size: int
    base_trainer: LocalTrainer | None = None  # without the prefix cache, for rules that change the base

    def trainer_for(self, aggregation: str) -> LocalTrainer:
        """The trainer for a job under ``aggregation``: without the prefix cache when the rule changes the base."""
        if not get_rule(aggregation).changes_base:
            return self.trainer
        if self.base_trainer is None:
            self.base_trainer = LocalTrainer(self.context.for_rule(aggregation))
        return self.base_trainer


_MODELS: dict[tuple[ModelSpec, int], tuple[AdaptedModel, object, str]] = {}
_NODES: dict[tuple[int, int], _Node] = {}


def _model(spec: ModelSpec, seed: int) -> tuple[AdaptedModel, object, str]:
    """The process's one model for ``spec`` (loaded on first use; every trained tensor is set per message)."""
    key = (spec, seed)
    if key not in _MODELS:
        log.info("loading %s once for this process (pid %d)", spec.path, os.getpid())
        model, tokenizer = load_adapted_model(spec, seed=seed)
        _MODELS[key] = (model, tokenizer, model_sha256(resolve_model_dir(spec.path)))
    return _MODELS[key]


def _node_config_number(context: Context, key: str) -> float | None:
    value = context.node_config.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _physical_memory_bytes() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _profile(context: Context, data: NodeData, measured_step_s: float, sha: str) -> NodeProfile:
    simulated = data.profile
    memory = _node_config_number(context, "memory-bytes")
    scale = _node_config_number(context, "compute-scale")
    uplink = _node_config_number(context, "uplink-mbps")
    downlink = _node_config_number(context, "downlink-mbps")
    return NodeProfile(
        device_id=data.device_id,
        label_counts=data.label_counts(),
        memory_bytes=int(memory or (simulated.memory_bytes if simulated else _physical_memory_bytes())),
        uplink_mbps=uplink or (simulated.uplink_mbps if simulated else DEFAULT_UPLINK_MBPS),
        downlink_mbps=downlink or (simulated.downlink_mbps if simulated else DEFAULT_DOWNLINK_MBPS),
        measured_step_s=measured_step_s,
        compute_scale=scale or (simulated.compute_scale if simulated else None),
        tier=(simulated.tier or "") if simulated else "",
        model_sha256=sha,
    )


def _measure_step_s(run: RunContext, device_id: str, batch_size: int, seed: int) -> float:
    """Seconds per training step at the model's full LoRA depth, timed over :data:`PROBE_STEPS` steps."""
    model = run.model
    forward = run.forward_for(model.max_depth)
    state = initial_adapter_state(model.peft_model, model.max_depth, seed)
    update = train_device(
        model,
        forward,
        state,
        run.device_rows[device_id],
        local_steps=PROBE_STEPS,
        batch_size=batch_size,
        learning_rate=1e-3,
        seed=derive_seed(seed, 3),
    )
    return update.mean_step_s


def _node(context: Context, model_fn: ModelFn, data_fn: DataFn, defaults: Mapping[str, object] | None) -> _Node:
    settings = _settings(context, defaults)
    key = (context.run_id, context.node_id)
    if key in _NODES:
        return _NODES[key]
    data = data_fn(context)
    spec = model_fn(context, data.num_classes)
    model, tokenizer, sha = _model(spec, settings.seed)
    tokenized = tokenize_texts(data.texts, data.labels, tokenizer, spec.max_seq_len)
    rows = torch.arange(len(data.texts), dtype=torch.long)
    source = PrefixCache(model, tokenized) if settings.use_prefix_cache else PlainForward(model, tokenized)
    run = RunContext(
        model=model,
        data=tokenized,
        device_rows={data.device_id: rows},
        eval_rows=torch.zeros(0, dtype=torch.long),
        forward_source=source,
        model_sha256=sha,
        fleet_sha256="",
    )
    node = _Node(
        data=data,
        context=run,
        trainer=LocalTrainer(run),
        model_sha256=sha,
        seed=settings.seed,
        batch_size=settings.batch_size,
    )
    _NODES[key] = node
    return node


def handle_query(
    message: Message, context: Context, model_fn: ModelFn, data_fn: DataFn, defaults: Mapping[str, object] | None
) -> Message:
    """Answer discovery with this node's :class:`NodeProfile` (timing :data:`PROBE_STEPS` training steps)."""
    node = _node(context, model_fn, data_fn, defaults)
    step_s = _measure_step_s(node.context, node.data.device_id, node.batch_size, node.seed)
    profile = _profile(context, node.data, step_s, node.model_sha256)
    return Message(encode_profile(profile), reply_to=message)


def handle_train(
    message: Message, context: Context, model_fn: ModelFn, data_fn: DataFn, defaults: Mapping[str, object] | None
) -> Message:
    """Train this device as the message says; reply with its state, loss, step seconds and what it trained."""
    node = _node(context, model_fn, data_fn, defaults)
    job = decode_job(message.content)
    if job.device_id != node.data.device_id:
        raise InvalidInputError([Issue("device-id", f"this node's device {node.data.device_id!r}", job.device_id)])
    task = TrainTask(
        global_round=job.global_round,
        intra_round=job.intra_round,
        group_index=job.group_index,
        depth=job.depth,
        layers=job.layers,
        device_ids=(job.device_id,),
        seeds=(job.seed,),
        start_state=job.start_state,
        local_steps=job.local_steps,
        batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        optimizer=job.optimizer,
        base_delta=job.base_delta,
        train_lora_a=job.train_lora_a,
    )
    (update,) = node.trainer_for(job.aggregation).train_task(task)
    return Message(encode_update(update, job, len(node.data.texts)), reply_to=message)


def make_client_app(
    model_fn: ModelFn | None = None,
    data_fn: DataFn | None = None,
    *,
    defaults: Mapping[str, object] | None = None,
) -> ClientApp:
    """A ClientApp that answers hierfedlora's discovery and trains LoRA at the depth each message names.

    Parameters
    ----------
    model_fn : callable, optional
        ``model_fn(context, num_labels) -> ModelSpec`` (``num_labels``: the data's ``num_classes``).
        Default: :func:`settings_model_spec`.
    data_fn : callable, optional
        ``data_fn(context) -> NodeData``, called once per node and process. Default:
        :func:`partition_node_data`.
    defaults : mapping, optional
        Run-config values for keys the run config lacks (``flwr.simulation.run_simulation`` passes
        no run config); dashed keys as in ``[tool.flwr.app.config]``.

    Examples
    --------
    >>> app = make_client_app(defaults={"model": "default", "rounds": 1})
    >>> type(app).__name__
    'ClientApp'
    """
    chosen_model_fn = model_fn or functools.partial(settings_model_spec, defaults=defaults)
    chosen_data_fn = data_fn or functools.partial(partition_node_data, defaults=defaults)
    if defaults:
        AppSettings.from_run_config({}, defaults)  # refuse bad defaults now, not in every node
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return handle_query(message, context, chosen_model_fn, chosen_data_fn, defaults)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return handle_train(message, context, chosen_model_fn, chosen_data_fn, defaults)

    return app
