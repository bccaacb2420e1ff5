r"""A cost model you cannot profile here: per-layer costs from a Hugging Face ``config.json`` and a device's throughput.

"LLaMA-class 7B on Jetson Orin and phones" needs a :class:`CostModel` without the weights or the
device. :func:`analytic_cost_model` counts, per transformer layer, the FLOPs and the bytes a
LoRA fine-tuning step moves, and prices them on a :class:`ComputeTier` (sustained FLOP/s, memory
bandwidth, a fixed cost per operator call) with a roofline. Shapes come from the config
(:func:`model_shape`); no torch, no weights.

Notation: ``T`` tokens per sample, ``h`` hidden size, ``f`` intermediate size, ``n`` heads,
``h_kv = n_kv * h / n`` the key/value width (grouped-query attention), ``r`` the LoRA rank,
``C`` classes, ``b`` samples per step, 4 bytes per fp32 number.

(A1) Forward FLOPs of one layer, per token (a multiply-add is 2 FLOPs)::

    proj = 2h(h + 2 h_kv) + 2h^2                  query, key, value, output
    attn = 4 T h                                  scores q.k and the weighted sum of v
    mlp  = 4 h f   (GELU MLP)   or   6 h f   (gated SiLU MLP: LLaMA)
    lora = sum over targeted modules of 2 r (in + out)     (only when the layer is trained)

(A2) Bytes one layer's forward moves, per batch: its weights once (``4 W_l``), and activations
     ``4 b T (12 h + 4 f + 4 n T)`` (inputs and outputs of every matmul, norm and activation,
     and the attention probabilities).

(A3) Time of a batch of work with ``F`` FLOPs, ``M`` bytes and ``k`` operator calls on a tier::

    t = k * op_overhead_s + max(F / flops_per_s, M / memory_bandwidth)

     ``layer_forward_s = t / b`` with ``k`` the layer's forward operator count (25 for BERT or
     GPT-2 blocks, 35 for LLaMA blocks with rotary embeddings and RMS norms).

(A4) What training a layer adds to its forward (``layer_backward_s``): input gradients through
     every projection and the attention (``proj + attn + mlp`` FLOPs again; frozen weights get no
     gradient), the LoRA forward and its two gradients (``3 lora``), the saved activations read
     back, and twice the forward's operator calls.

(A5) Embeddings: a lookup and a norm, memory-bound, ``4 b T h * 4`` bytes and 8 calls. Head step:
     the classifier's forward and backward on one token (``6 h C`` FLOPs, plus the BERT pooler's
     ``6 h^2``), the loss and AdamW on the head (24 calls). Optimizer: AdamW over one layer's
     LoRA tensors (2 per targeted module; 12 calls each, 32 bytes read and written per number).

(A6) Bytes: LoRA ``4 r (in + out)`` per targeted module; the head ``4 (h C + C)`` (BERT) or
     ``4 h C`` (GPT-2 and LLaMA score heads, no bias); optimizer state 3x the adapters (gradient
     and two Adam moments); activations kept for backward ``4 T (6 h + 2 f + 2 n T)`` per sample
     (``3 f`` for gated MLPs); the frozen model ``4 x`` its parameter count; one layer's dense
     targets (FedEx-LoRA's residual) ``4 in out`` per targeted module.

The constants of :data:`COMPUTE_TIERS` cite their sources or say ASSUMPTION. How well this
predicts ``hierfedlora profile``'s measurements on this host, per layer and per depth, is in the
README ("Cost models you cannot profile"), and ``tests/planner/test_analytic_costs.py`` holds the
documented tolerance against a measured cost model.

Examples
--------
>>> shape = model_shape({"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384,
...     "intermediate_size": 1536, "num_attention_heads": 12, "vocab_size": 30522,
...     "max_position_embeddings": 512, "type_vocab_size": 2})
>>> shape.target_modules, shape.lora_numel(rank=8)  # query and value: 2 x 8 x (384 + 384)
(('query', 'value'), 12288)
>>> cost = analytic_cost_model(shape, COMPUTE_TIERS["reference-host"], batch_size=8, seq_len=24,
...     lora_rank=8, num_labels=26)
>>> cost.num_layers, cost.adapter_bytes_per_layer, cost.head_bytes  # the measured model's bytes exactly
(6, 49152, 40040)
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.tiers import HOST_TRAIN_GFLOPS
from hierfedlora.planner.rules import is_int
from hierfedlora.planner.types import CostModel

__all__ = ["COMPUTE_TIERS", "ComputeTier", "ModelShape", "analytic_cost_model", "model_shape"]

_FP32 = 4
_GATED = ("llama", "mistral", "qwen2", "gemma")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ComputeTier:
    """Sustained training throughput of one kind of device (A3); ``sources`` cite each figure."""

    name: str
    flops_per_s: float
    memory_bandwidth_bytes_per_s: float
    op_overhead_s: float
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        issues = [
            Issue(name, "a finite number > 0", getattr(self, name))
            for name in ("flops_per_s", "memory_bandwidth_bytes_per_s")
            if not _positive(getattr(self, name))
        ]
        if not (_positive(self.op_overhead_s) or self.op_overhead_s == 0):
            issues.append(Issue("op_overhead_s", "a finite number >= 0", self.op_overhead_s))
        if issues:
            raise InvalidInputError(issues)


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


COMPUTE_TIERS: Mapping[str, ComputeTier] = types.MappingProxyType(
    {
        "reference-host": ComputeTier(
            name="reference-host",
            flops_per_s=HOST_TRAIN_GFLOPS * 1e9,
            memory_bandwidth_bytes_per_s=10e9,
            op_overhead_s=8e-6,
            sources=(
                "planner.fleets.tiers.HOST_TRAIN_GFLOPS: the 2-core host the tiers' compute_scale is relative to",
                "ASSUMPTION: 10 GB/s of memory bandwidth for two cores of a shared x86 server",
                "ASSUMPTION: 8 us per eager PyTorch CPU operator call (dispatch and allocation)",
            ),
        ),
        "jetson-agx-orin": ComputeTier(
            name="jetson-agx-orin",
            flops_per_s=5.3e12 * 0.25,
            memory_bandwidth_bytes_per_s=204.8e9,
            op_overhead_s=20e-6,
            sources=(
                "NVIDIA Jetson AGX Orin Series Technical Brief: 5.3 FP32 TFLOPS, 204.8 GB/s LPDDR5",
                "ASSUMPTION: 25% of FP32 peak sustained (planner.fleets.tiers.GPU_TRAIN_UTILISATION spans 15-35%)",
                "ASSUMPTION: 20 us per CUDA kernel launch from eager PyTorch on an ARM CPU",
            ),
        ),
        "phone-flagship": ComputeTier(
            name="phone-flagship",
            flops_per_s=22e9,
            memory_bandwidth_bytes_per_s=25e9,
            op_overhead_s=15e-6,
            sources=(
                "Das et al. 2022 (arXiv 2202.10100): 15-30 GFLOP/s training on Snapdragon 8-series CPUs",
                "ASSUMPTION: half of LPDDR5's 51.2 GB/s sustained by the CPU cluster",
                "ASSUMPTION: 15 us per operator call of a mobile training runtime",
            ),
        ),
    }
)
"""Device throughputs for :func:`analytic_cost_model`; ``reference-host`` is what ``compute_scale`` is relative to."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    """The sizes of a transformer that set its costs (from a Hugging Face ``config.json``)."""

    model_type: str
    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    positions: int
    type_vocab: int
    gated_mlp: bool
    target_modules: tuple[str, ...]

    @property
    def kv_width(self) -> int:
        """``h_kv``: the width of keys and values."""
        return self.hidden * self.kv_heads // self.heads

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every module LoRA can target, by its Hugging Face name."""
        h, kv = self.hidden, self.kv_width
        return {
            "query": (h, h), "key": (h, h), "value": (h, h),
            "c_attn": (h, 3 * h), "c_proj": (h, h),
            "q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
        }  # fmt: skip

    def lora_numel(self, *, rank: int) -> int:
        """LoRA numbers in one layer: ``r (in + out)`` per targeted module."""
        dims = self.module_dims()
        return sum(rank * (dims[m][0] + dims[m][1]) for m in self.target_modules)

    def layer_params(self) -> int:
        """Frozen weights and biases of one layer."""
        h, f, kv = self.hidden, self.intermediate, self.kv_width
        if self.gated_mlp:
            return 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
        return 2 * h * h + 2 * h * kv + 2 * h * f + 4 * h + 2 * kv + f + h + 4 * h

    def base_params(self) -> int:
        """Frozen parameters of the whole model (embeddings, layers, final norm or pooler)."""
        h = self.hidden
        embeddings = self.vocab * h + (0 if self.gated_mlp else self.positions * h) + self.type_vocab * h
        extra = h if self.gated_mlp else (h * h + h + 2 * h if self.model_type == "bert" else 2 * h)
        return embeddings + self.num_layers * self.layer_params() + extra


_KEYS = {
    "num_layers": ("num_hidden_layers", "n_layer"),
    "hidden": ("hidden_size", "n_embd"),
    "heads": ("num_attention_heads", "n_head"),
    "vocab": ("vocab_size",),
}
_OPTIONAL_KEYS = {  # field -> (config keys, least value); absent or null takes the architecture's default
    "intermediate": (("intermediate_size", "n_inner"), 1),
    "kv_heads": (("num_key_value_heads",), 1),
    "positions": (("max_position_embeddings", "n_positions"), 0),
    "type_vocab": (("type_vocab_size",), 0),
}
MAX_MODEL_SIZE = 2**31
"""Largest size (width, heads, vocabulary, positions) a config may give: larger is a mistake, and would
overflow the cost arithmetic."""
MAX_NUM_LAYERS = 4096
"""Most layers a config may give (the cost model holds numbers per layer; the largest models have ~100)."""
_DEFAULT_TARGETS = {"bert": ("query", "value"), "gpt2": ("c_attn",), "llama": ("q_proj", "v_proj")}


def _get(config: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    return next((config[n] for n in names if n in config and config[n] is not None), None)


def model_shape(config: Mapping[str, Any], *, target_modules: tuple[str, ...] | None = None) -> ModelShape:
    """The :class:`ModelShape` of a Hugging Face config (a parsed ``config.json``).

    Raises
    ------
    InvalidInputError
        A size missing or not a positive integer (named by its config key), an unknown target
        module, or an architecture with no default targets when ``target_modules`` is not given.
    """
    issues = []
    values: dict[str, int] = {}
    if not isinstance(config, Mapping):
        expected = "a JSON object (a Hugging Face config.json)"
        raise InvalidInputError([Issue("(top level)", expected, type(config).__name__)], "config.json")
    for field, names in _KEYS.items():
        value = _get(config, names)
        most = MAX_NUM_LAYERS if field == "num_layers" else MAX_MODEL_SIZE
        if not (is_int(value) and 1 <= value <= most):
            expected = f"an integer >= 1, at most {most}"
            issues.append(Issue(names[0], expected, value if value is not None else "missing"))
        else:
            values[field] = value
    optional: dict[str, int] = {}
    for field, (names, least) in _OPTIONAL_KEYS.items():
        value = _get(config, names)
        if value is not None and not (is_int(value) and least <= value <= MAX_MODEL_SIZE):
            issues.append(Issue(names[0], f"an integer >= {least}, at most {MAX_MODEL_SIZE}, or absent", value))
        elif value is not None:
            optional[field] = value
    model_type = str(config.get("model_type", ""))
    gated = model_type in _GATED or str(config.get("hidden_act", "")) == "silu"
    if issues:
        raise InvalidInputError(issues, "config.json")
    h = values["hidden"]
    intermediate = optional.get("intermediate") or 4 * h
    kv_heads = optional.get("kv_heads") or values["heads"]
    family = "llama" if gated else model_type
    targets = target_modules or _DEFAULT_TARGETS.get(family)
    if targets is None:
        raise InvalidInputError(
            [Issue("target_modules", f"a list of module names (no default for model_type {model_type!r})", None)]
        )
    shape = ModelShape(
        model_type=family,
        num_layers=values["num_layers"],
        hidden=h,
        intermediate=int(intermediate),
        heads=values["heads"],
        kv_heads=int(kv_heads),
        vocab=values["vocab"],
        positions=optional.get("positions", 0),
        type_vocab=optional.get("type_vocab", 0),
        gated_mlp=gated,
        target_modules=tuple(targets),
    )
    unknown = [m for m in shape.target_modules if m not in shape.module_dims()]
    if unknown:
        raise InvalidInputError(
            [Issue("target_modules", f"modules among {', '.join(shape.module_dims())}", tuple(unknown))]
        )
    return shape


def _seconds(tier: ComputeTier, flops: float, num_bytes: float, calls: int) -> float:
    """(A3) One batch of work on ``tier``."""
    return calls * tier.op_overhead_s + max(flops / tier.flops_per_s, num_bytes / tier.memory_bandwidth_bytes_per_s)


def analytic_cost_model(
    shape: ModelShape,
    tier: ComputeTier,
    *,
    batch_size: int,
    seq_len: int,
    lora_rank: int,
    num_labels: int,
    model_name: str = "",
) -> CostModel:
    """(A1)-(A6): the :class:`CostModel` of ``shape`` fine-tuned with LoRA on ``tier``.

    ``measured_on`` says it is analytic and names the tier, so a plan's provenance shows it.

    Raises
    ------
    InvalidInputError
        ``batch_size``, ``seq_len``, ``lora_rank`` or ``num_labels`` not an integer >= 1.
    """
    issues = [
        Issue(name, "an integer >= 1", value)
        for name, value in (
            ("batch_size", batch_size),
            ("seq_len", seq_len),
            ("lora_rank", lora_rank),
            ("num_labels", num_labels),
        )
        if not (is_int(value) and value >= 1)
    ]
    if issues:
        raise InvalidInputError(issues)
    b, t, h, f, n = batch_size, seq_len, shape.hidden, shape.intermediate, shape.heads
    proj = 2 * h * (h + 2 * shape.kv_width) + 2 * h * h
    attn = 4 * t * h
    mlp = (6 if shape.gated_mlp else 4) * h * f
    lora_numel = shape.lora_numel(rank=lora_rank)
    lora = 2 * lora_numel
    calls = 35 if shape.gated_mlp else 25
    activations = _FP32 * b * t * (12 * h + 4 * f + 4 * n * t)  # (A2)
    weights = _FP32 * shape.layer_params()
    forward = _seconds(tier, b * t * (proj + attn + mlp), weights + activations, calls)  # (A1)-(A3)
    backward = _seconds(  # (A4)
        tier,
        b * t * (proj + attn + mlp + 3 * lora),
        weights + activations,
        2 * calls + 4 * len(shape.target_modules),
    )
    embedding = _seconds(tier, 0.0, _FP32 * b * t * h * 4, 8)  # (A5)
    head_flops = 6 * h * num_labels + (6 * h * h if shape.model_type == "bert" else 0)
    head = _seconds(tier, b * head_flops, _FP32 * (h * num_labels) * 8, 24)
    optimizer = _seconds(tier, 0.0, 8 * _FP32 * lora_numel, 12 * 2 * len(shape.target_modules))
    head_numel = h * num_labels + (num_labels if shape.model_type == "bert" else 0)  # (A6)
    dims = shape.module_dims()  # FedEx-LoRA's residual: one layer's dense (out, in) targets
    mlp_saved = 3 * f if shape.gated_mlp else 2 * f
    return CostModel(
        model_name=model_name or f"{shape.model_type}-{shape.num_layers}x{h}",
        measured_on=f"analytic (planner.analytic_costs) on {tier.name}: {tier.flops_per_s / 1e9:.4g} GFLOP/s, "
        f"{tier.memory_bandwidth_bytes_per_s / 1e9:.4g} GB/s, {tier.op_overhead_s * 1e6:.3g} us per call",
        num_layers=shape.num_layers,
        batch_size=b,
        seq_len=t,
        embedding_forward_s=embedding / b,
        layer_forward_s=(forward / b,) * shape.num_layers,
        layer_backward_s=(backward / b,) * shape.num_layers,
        head_step_s=head / b,
        layer_optimizer_s=optimizer,
        adapter_bytes_per_layer=_FP32 * lora_numel,
        head_bytes=_FP32 * head_numel,
        activation_bytes_per_sample_per_layer=_FP32 * t * (6 * h + mlp_saved + 2 * n * t),
        optimizer_bytes_per_layer=3 * _FP32 * lora_numel,
        base_model_bytes=_FP32 * shape.base_params(),
        lora_rank=lora_rank,
        num_labels=num_labels,
        dense_bytes_per_layer=_FP32 * sum(dims[m][0] * dims[m][1] for m in shape.target_modules),  # (A6)
    )
