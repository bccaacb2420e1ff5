"""What travels between the ServerApp and a ClientApp: message types, record names and the codecs.

Two exchanges, both Flower ``Message``s built fresh per node:

- **Discovery** (``query`` message, :data:`QUERY`): the server asks every node who it is; the reply's
  ConfigRecord :data:`PROFILE_RECORD` holds the device id, label counts, sample count, memory, link
  rates, measured step seconds and (optionally) a simulated ``compute-scale`` (:class:`NodeProfile`).
- **Training** (``train`` message, :data:`TRAIN`): the server sends one device its group's adapter
  slice (ArrayRecord :data:`STATE_RECORD`, the keys of the group's depth or layers plus the head), a
  ConfigRecord :data:`TASK_RECORD` (group, lora-depth, layers, local-steps, batch-size, learning-rate,
  optimizer, seed, global-round, intra-round, device-id, and the run's aggregation rule: aggregation,
  train-lora-a) and, when the rule changes the frozen weights (FedEx-LoRA, FLoRA) and the delta is not
  empty, the base delta the device trains on (ArrayRecord :data:`BASE_DELTA_RECORD`, one ``(out, in)``
  tensor per LoRA module, ``models.base_delta``); the reply holds the trained state under the same
  ArrayRecord name and a MetricRecord :data:`RESULT_RECORD` (mean loss, mean step seconds, the depth
  and group it trained, num-examples). A message without the rule's fields (made before they existed)
  reads as FedAvg's: rule ``fedavg``, ``lora_A`` trained, no base delta.

Tensors travel as numpy arrays (``ArrayRecord.from_torch_state_dict``), which is exact for every
dtype torch and numpy share: a state (or base delta) decoded equals the one encoded bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from hierfedlora.models.adapters import AdapterState
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.runtime.aggregation_rules import RULE_NAMES, BaseDelta, get_rule
from hierfedlora.runtime.local_training import DeviceUpdate

__all__ = [
    "BASE_DELTA_RECORD",
    "PROFILE_RECORD",
    "QUERY",
    "RESULT_RECORD",
    "STATE_RECORD",
    "TASK_RECORD",
    "TRAIN",
    "DeviceJob",
    "NodeProfile",
    "decode_job",
    "decode_profile",
    "decode_update",
    "encode_job",
    "encode_profile",
    "encode_update",
    "reply_issue",
]

QUERY = "query"
TRAIN = "train"
PROFILE_RECORD = "hierfedlora-profile"
STATE_RECORD = "hierfedlora-state"
TASK_RECORD = "hierfedlora-task"
RESULT_RECORD = "hierfedlora-result"
BASE_DELTA_RECORD = "hierfedlora-base-delta"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceJob:
    """One device's share of a training task: what a ``train`` message asks a node to do.

    ``layers`` is FedRA's explicit layer set, or ``None`` for the top ``depth`` layers. ``aggregation``,
    ``base_delta`` and ``train_lora_a`` are the run's rule and what the engine's
    :class:`~hierfedlora.runtime.executors.base.TrainTask` carries for it: the base-weight delta the device
    trains on (FedEx-LoRA, FLoRA; empty otherwise) and ``False`` to keep ``lora_A`` frozen (FFA-LoRA).
    The node drops its frozen-prefix cache under a rule that changes the base
    (``RunContext.for_rule``), as the in-process engine does.
    """

    device_id: str
    group_index: int
    depth: int
    layers: tuple[int, ...] | None
    local_steps: int
    batch_size: int
    learning_rate: float
    optimizer: str
    seed: int
    global_round: int
    intra_round: int
    start_state: AdapterState
    aggregation: str = "fedavg"
    base_delta: BaseDelta = dataclasses.field(default_factory=dict)
    train_lora_a: bool = True


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeProfile:
    """A node's answer to discovery: who it is, what data it holds, what it can do.

    ``compute_scale`` is a simulated speed (a fleet's tier, or the node's ``compute-scale`` config);
    ``None`` means "derive it from ``measured_step_s``" (the server divides by the cost model's step).
    """

    device_id: str
    label_counts: tuple[int, ...]
    memory_bytes: int
    uplink_mbps: float
    downlink_mbps: float
    measured_step_s: float
    compute_scale: float | None = None
    tier: str = ""
    model_sha256: str = ""

    @property
    def num_samples(self) -> int:
        """Training samples the node holds."""
        return sum(self.label_counts)


def _state_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict({key: value.detach().cpu() for key, value in state.items()})


def _state_of(record: ArrayRecord) -> AdapterState:
    # ``torch.from_numpy`` shares the record's buffer; clone so the state owns writable memory.
    return {key: value.clone() for key, value in record.to_torch_state_dict().items()}


def encode_job(job: DeviceJob) -> RecordDict:
    """The content of a ``train`` message for ``job``."""
    config = ConfigRecord(
        {
            "device-id": job.device_id,
            "group": job.group_index,
            "lora-depth": job.depth,
            "layers": list(job.layers) if job.layers is not None else [],
            "local-steps": job.local_steps,
            "batch-size": job.batch_size,
            "learning-rate": float(job.learning_rate),
            "optimizer": job.optimizer,
            "seed": job.seed,
            "global-round": job.global_round,
            "intra-round": job.intra_round,
            "aggregation": job.aggregation,
            "train-lora-a": bool(job.train_lora_a),
        }
    )
    records: dict[str, ArrayRecord | ConfigRecord] = {STATE_RECORD: _state_record(job.start_state), TASK_RECORD: config}
    if job.base_delta:
        records[BASE_DELTA_RECORD] = _state_record(job.base_delta)
    return RecordDict(records)


def _require(content: RecordDict, name: str, kind: type) -> object:
    record = content.get(name)
    if not isinstance(record, kind):
        raise InvalidInputError([Issue(f"message.content[{name!r}]", f"a {kind.__name__}", type(record).__name__)])
    return record


def decode_job(content: RecordDict) -> DeviceJob:
    """The :class:`DeviceJob` a ``train`` message carries.

    The rule's fields are optional: without ``aggregation``, ``train-lora-a`` and the base-delta record
    (a message made before they existed) the job is FedAvg's.

    Raises
    ------
    InvalidInputError
        A missing record or field (the message was not made by :func:`encode_job`); an unknown
        ``aggregation``; a ``train-lora-a`` that is not a bool; a base-delta record that is not an ArrayRecord,
        or one under a rule that does not change the base.
    """
    config = _require(content, TASK_RECORD, ConfigRecord)
    state = _require(content, STATE_RECORD, ArrayRecord)
    assert isinstance(config, ConfigRecord) and isinstance(state, ArrayRecord)
    names = ("device-id", "group", "lora-depth", "layers", "local-steps", "batch-size", "learning-rate")
    names += ("optimizer", "seed", "global-round", "intra-round")
    issues = [Issue(f"{TASK_RECORD}[{name!r}]", "present", "missing") for name in names if name not in config]
    aggregation, train_lora_a = config.get("aggregation", "fedavg"), config.get("train-lora-a", True)
    if aggregation not in RULE_NAMES:
        issues.append(Issue(f"{TASK_RECORD}['aggregation']", f"one of {', '.join(RULE_NAMES)}", aggregation))
    if not isinstance(train_lora_a, bool):
        issues.append(Issue(f"{TASK_RECORD}['train-lora-a']", "true or false", train_lora_a))
    delta = content.get(BASE_DELTA_RECORD)
    if delta is not None and not isinstance(delta, ArrayRecord):
        issues.append(Issue(f"message.content[{BASE_DELTA_RECORD!r}]", "an ArrayRecord", type(delta).__name__))
    elif delta is not None and aggregation in RULE_NAMES and not get_rule(aggregation).changes_base:
        # a node caches frozen-prefix states from the pristine base under such a rule: they would be stale
        expected = "absent unless the aggregation changes the base (fedex, flora)"
        issues.append(Issue(f"message.content[{BASE_DELTA_RECORD!r}]", expected, f"present under {aggregation!r}"))
    if issues:
        raise InvalidInputError(issues, "train message")
    layers = config["layers"]
    return DeviceJob(
        device_id=str(config["device-id"]),
        group_index=int(config["group"]),  # type: ignore[arg-type]
        depth=int(config["lora-depth"]),  # type: ignore[arg-type]
        layers=tuple(int(x) for x in layers) if layers else None,  # type: ignore[union-attr]
        local_steps=int(config["local-steps"]),  # type: ignore[arg-type]
        batch_size=int(config["batch-size"]),  # type: ignore[arg-type]
        learning_rate=float(config["learning-rate"]),  # type: ignore[arg-type]
        optimizer=str(config["optimizer"]),
        seed=int(config["seed"]),  # type: ignore[arg-type]
        global_round=int(config["global-round"]),  # type: ignore[arg-type]
        intra_round=int(config["intra-round"]),  # type: ignore[arg-type]
        start_state=_state_of(state),
        aggregation=str(aggregation),
        base_delta=_state_of(delta) if isinstance(delta, ArrayRecord) else {},
        train_lora_a=bool(train_lora_a),
    )


def encode_update(update: DeviceUpdate, job: DeviceJob, num_examples: int) -> RecordDict:
    """The content of a ``train`` reply: the trained state, and the metrics with what was trained."""
    metrics = MetricRecord(
        {
            "mean-loss": float(update.mean_loss),
            "mean-step-s": float(update.mean_step_s),
            "lora-depth": job.depth,
            "group": job.group_index,
            "num-examples": int(num_examples),
        }
    )
    return RecordDict({STATE_RECORD: _state_record(update.state), RESULT_RECORD: metrics})


def decode_update(content: RecordDict) -> tuple[DeviceUpdate, Mapping[str, float | int]]:
    """The :class:`DeviceUpdate` of a ``train`` reply, and its metrics (depth, group, num-examples...)."""
    metrics = _require(content, RESULT_RECORD, MetricRecord)
    state = _require(content, STATE_RECORD, ArrayRecord)
    assert isinstance(metrics, MetricRecord) and isinstance(state, ArrayRecord)
    update = DeviceUpdate(
        state=_state_of(state),
        mean_loss=float(metrics["mean-loss"]),  # type: ignore[arg-type]
        mean_step_s=float(metrics["mean-step-s"]),  # type: ignore[arg-type]
    )
    return update, dict(metrics)  # type: ignore[arg-type]


def encode_profile(profile: NodeProfile) -> RecordDict:
    """The content of a ``query`` reply."""
    fields: dict[str, object] = {
        "device-id": profile.device_id,
        "label-counts": [int(c) for c in profile.label_counts],
        "num-samples": profile.num_samples,
        "memory-bytes": int(profile.memory_bytes),
        "uplink-mbps": float(profile.uplink_mbps),
        "downlink-mbps": float(profile.downlink_mbps),
        "measured-step-s": float(profile.measured_step_s),
        "tier": profile.tier,
        "model-sha256": profile.model_sha256,
    }
    if profile.compute_scale is not None:
        fields["compute-scale"] = float(profile.compute_scale)
    return RecordDict({PROFILE_RECORD: ConfigRecord(fields)})  # type: ignore[arg-type]


def decode_profile(content: RecordDict) -> NodeProfile:
    """The :class:`NodeProfile` of a ``query`` reply."""
    config = _require(content, PROFILE_RECORD, ConfigRecord)
    assert isinstance(config, ConfigRecord)
    scale = config.get("compute-scale")
    return NodeProfile(
        device_id=str(config["device-id"]),
        label_counts=tuple(int(c) for c in config["label-counts"]),  # type: ignore[union-attr]
        memory_bytes=int(config["memory-bytes"]),  # type: ignore[arg-type]
        uplink_mbps=float(config["uplink-mbps"]),  # type: ignore[arg-type]
        downlink_mbps=float(config["downlink-mbps"]),  # type: ignore[arg-type]
        measured_step_s=float(config["measured-step-s"]),  # type: ignore[arg-type]
        compute_scale=float(scale) if scale is not None else None,  # type: ignore[arg-type]
        tier=str(config.get("tier", "")),
        model_sha256=str(config.get("model-sha256", "")),
    )


def reply_issue(reply: Message, what: str) -> Issue | None:
    """An issue naming the node and its error when ``reply`` carries an error instead of content."""
    if reply.has_error():
        reason = (reply.error.reason or "").strip().splitlines()
        detail = reason[-1] if reason else "no reason given"
        return Issue(f"node {reply.metadata.src_node_id}", f"a {what} reply", f"error {reply.error.code}: {detail}")
    return None
