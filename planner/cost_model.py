"""The measured cost model (:class:`CostModel`): per-layer times and bytes from one host, with their field rules,
and :func:`with_num_labels`, which re-sizes its classification head for another class count.

``models.profiling`` measures it; ``planner.costs`` and the runtime's clock price steps, uploads and memory with it.
"""

from __future__ import annotations

import dataclasses

from hierfedlora.planner.errors import Issue, raise_if_any
from hierfedlora.planner.rules import (
    ANY_STRING,
    FINITE_NON_NEGATIVE,
    MAX_BYTES,
    MAX_STEP_S,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    Rule,
    check_fields,
    check_limits,
    finite_tuple,
    is_int,
)
from hierfedlora.planner.schema import SCHEMA_RULE, SCHEMA_VERSION

__all__ = ["COST_MODEL_LIMITS", "COST_MODEL_RULES", "CostModel", "with_num_labels"]


COST_MODEL_RULES: dict[str, Rule] = {
    "model_name": NON_EMPTY_STRING,
    "model_sha256": ANY_STRING,
    "measured_on": ANY_STRING,
    "num_layers": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "seq_len": POSITIVE_INT,
    "embedding_forward_s": FINITE_NON_NEGATIVE,
    "layer_forward_s": finite_tuple(positive=True),
    "layer_backward_s": finite_tuple(positive=True),
    "head_step_s": FINITE_NON_NEGATIVE,
    "layer_optimizer_s": FINITE_NON_NEGATIVE,
    "adapter_bytes_per_layer": POSITIVE_INT,
    "head_bytes": NON_NEGATIVE_INT,
    "activation_bytes_per_sample_per_layer": POSITIVE_INT,
    "optimizer_bytes_per_layer": NON_NEGATIVE_INT,
    "base_model_bytes": POSITIVE_INT,
    "lora_rank": POSITIVE_INT,
    "num_labels": OPTIONAL_POSITIVE_INT,
    "dense_bytes_per_layer": OPTIONAL_POSITIVE_INT,
    "schema_version": SCHEMA_RULE,
}

COST_MODEL_LIMITS: dict[str, float] = {
    "num_layers": 10_000,
    "batch_size": 2**20,
    "seq_len": 2**24,
    "embedding_forward_s": MAX_STEP_S,
    "layer_forward_s": MAX_STEP_S,
    "layer_backward_s": MAX_STEP_S,
    "head_step_s": MAX_STEP_S,
    "layer_optimizer_s": MAX_STEP_S,
    "adapter_bytes_per_layer": MAX_BYTES,
    "head_bytes": MAX_BYTES,
    "activation_bytes_per_sample_per_layer": MAX_BYTES,
    "optimizer_bytes_per_layer": MAX_BYTES,
    "base_model_bytes": MAX_BYTES,
    "lora_rank": 2**16,
    "dense_bytes_per_layer": MAX_BYTES,
}
"""Upper bounds of :data:`COST_MODEL_RULES` fields: a measured per-layer time past ``MAX_STEP_S`` seconds
per batch is a mistake, and would reach the solver as a coefficient it cannot handle."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CostModel:
    """Per-layer costs measured on one host (``models.profiling``); plain numbers.

    Layer tuples run from the layer next to the embeddings (index 0) to the output layer
    (index ``num_layers - 1``). Times are seconds **per sample** at ``batch_size`` and
    ``seq_len`` on the host named in ``measured_on``, except ``layer_optimizer_s``, which is
    seconds per optimizer step per trained layer.

    Parameters
    ----------
    embedding_forward_s : float
        Embedding lookup and norm, per sample.
    layer_forward_s, layer_backward_s : tuple of float
        Forward of each layer; backward of each layer when it carries LoRA (input and
        adapter gradients), per sample.
    head_step_s : float
        Classification head forward + backward, per sample.
    adapter_bytes_per_layer, head_bytes : int
        Bytes of one layer's LoRA tensors and of the trainable head (what travels).
    activation_bytes_per_sample_per_layer : int
        Activations a trained layer keeps for backward, per sample.
    optimizer_bytes_per_layer : int
        Gradient and optimizer state for one layer's adapters.
    base_model_bytes : int
        Frozen weights held in memory.
    num_labels : int or None
        Classes of the head whose ``head_bytes`` these are; a fleet with another class count
        is refused (``checks.check_problem``) until :func:`with_num_labels` re-sizes the head.
        ``None`` in cost models written before it existed (then nothing can be checked).
    dense_bytes_per_layer : int or None
        Bytes of one layer's dense LoRA target matrices (the largest layer's): what FedEx-LoRA's
        residual moves per trained layer (``planner.costs`` (C9)). ``None`` in cost models written
        before it existed; planning under ``aggregation="fedex"`` needs it.
    """

    model_name: str
    model_sha256: str = ""
    measured_on: str = ""
    num_layers: int
    batch_size: int
    seq_len: int
    embedding_forward_s: float
    layer_forward_s: tuple[float, ...]
    layer_backward_s: tuple[float, ...]
    head_step_s: float
    layer_optimizer_s: float
    adapter_bytes_per_layer: int
    head_bytes: int
    activation_bytes_per_sample_per_layer: int
    optimizer_bytes_per_layer: int
    base_model_bytes: int
    lora_rank: int = 8
    num_labels: int | None = None
    dense_bytes_per_layer: int | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, COST_MODEL_RULES) + check_limits(self, COST_MODEL_LIMITS, COST_MODEL_RULES)
        if is_int(self.num_layers):
            for name in ("layer_forward_s", "layer_backward_s"):
                value = getattr(self, name)
                if isinstance(value, tuple) and len(value) != self.num_layers:
                    issues.append(Issue(name, f"one entry per layer ({self.num_layers})", f"{len(value)} entries"))
        raise_if_any(issues)


def with_num_labels(cost: CostModel, num_labels: int) -> CostModel:
    """``cost`` with its head re-sized to ``num_labels`` classes.

    A classification head is a linear map from the hidden state to one score per class (with a
    bias or without), so its bytes are proportional to the class count: ``head_bytes * C' / C``,
    rounded. Compute times stay: the head's share of a step is a fraction of a per cent.

    Examples
    --------
    >>> cost = CostModel(model_name="m", num_layers=1, batch_size=1, seq_len=1, embedding_forward_s=0.0,
    ...     layer_forward_s=(1.0,), layer_backward_s=(1.0,), head_step_s=0.0, layer_optimizer_s=0.0,
    ...     adapter_bytes_per_layer=1, head_bytes=40040, activation_bytes_per_sample_per_layer=1,
    ...     optimizer_bytes_per_layer=0, base_model_bytes=1, num_labels=26)
    >>> with_num_labels(cost, 4).head_bytes  # 4 (384 x 4 + 4): MiniLM's head for four classes
    6160

    Raises
    ------
    InvalidInputError
        If ``cost.num_labels`` is unknown (``None``) or ``num_labels`` is not an integer >= 1.
    """
    issues = []
    if cost.num_labels is None:
        issues.append(Issue("cost_model.num_labels", "the class count of the measured head (profile again)", None))
    if not (is_int(num_labels) and num_labels >= 1):
        issues.append(Issue("num_labels", "an integer >= 1", num_labels))
    raise_if_any(issues)
    head = round(cost.head_bytes * num_labels / cost.num_labels)  # type: ignore[operator]
    return dataclasses.replace(cost, head_bytes=head, num_labels=num_labels)
