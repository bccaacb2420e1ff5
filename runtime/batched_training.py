"""Batched device training: the devices of one task train as one computation, as if one after another.

The devices of a task start from the same state and are independent until the group's FedAvg.
:func:`train_devices_batched` trains ``D`` of them at once:

(B1) **One forward and backward a step.** Step ``t`` concatenates every device's ``t``-th batch
     (``device_batches`` with the device's own seed, so the same rows in the same order as
     :func:`~hierfedlora.runtime.local_training.train_device`) into one batch of ``sum_d b_d`` rows.
     The frozen base model is shared and works row by row (linear layers, norms, attention within a
     row), so it runs once on all rows.
(B2) **Per-device weights on a device axis.** Every trainable tensor (LoRA ``A``, ``B``, the head)
     becomes a leaf ``[D, ...]``; each ``nn.Linear`` that owns one computes its rows with its
     device's slice (a batched matmul; rows gathered by device when batch sizes differ).
(B3) **Per-device loss.** ``loss_d`` is the cross-entropy mean over device ``d``'s rows, what the
     model's own loss computes for a single-label head; backward runs on ``sum_d loss_d``, whose
     gradient in device ``d``'s slice is exactly ``grad loss_d``: no row of another device reaches it.
(B4) **One optimizer step.** AdamW (weight decay 0) and SGD are elementwise, so one optimizer over
     the stacked tensors is ``D`` independent optimizers: the same update, the same step counts.
(B5) **Per-device randomness.** Each device has its own generator in the state the sequential path's
     global RNG would have (``torch.manual_seed(seed)``). A ``TorchFunctionMode`` catches every dropout
     (``F.dropout``, and SDPA's attention dropout) and draws it per device on that device's rows from that
     device's generator: the same masks, drawn in the same order, as the device trained alone.
     ``F.dropout`` is what torch computes on CPU, ``x * (bernoulli(1 - p) / (1 - p))``: the noise is drawn
     device by device as ``bernoulli_`` draws it (``runtime.device_dropout``: uniform doubles where they
     give the same bits, for less), and one product over all rows applies it (the same values as a product
     per device, without splitting the activations and their gradients by device). Attention with dropout
     runs as one call over every device's rows where ``runtime.device_dropout`` checked its replica of
     torch's kernel bit for bit for that kind of call, and per device through torch's kernel otherwise.
     Any other random op under the mode raises (it would draw masks the sequential path does not).
(B6) **Token packing** (``runtime.token_packing``, with ``attention_mask``): the frozen linear layers of
     the trained layers compute the step's real tokens only; the same values (bit for bit where the
     BLAS computes a row alike in calls of any size).

So the batched path computes what the sequential one does; only rounding differs, from matmuls
of other shapes (losses, gradients and states agree to ~1e-6, tested to 1e-5 on BERT, GPT-2 and
LLaMA at every depth, with and without the prefix cache, dropout on).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hierfedlora.models.adapters import AdapterState
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.planner.types import CostModel
from hierfedlora.runtime.data import device_batches
from hierfedlora.runtime.device_dropout import (
    AttentionCall,
    DeviceRows,
    attention_with_dropout,
    draw_keep_masks,
    replica_admits,
)
from hierfedlora.runtime.forward import Forward
from hierfedlora.runtime.local_training import DeviceUpdate
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.token_packing import StepTokens, packed_linears

__all__ = ["DeviceBatching", "batching_supported", "device_batching", "train_devices_batched"]

F = torch.nn.functional

# random ops the mode refuses: drawing them for all rows at once would differ from the sequential path
_REFUSED = frozenset(
    {
        torch.bernoulli,
        torch.Tensor.bernoulli_,
        torch.rand,
        torch.rand_like,
        torch.randn,
        torch.randn_like,
        torch.randint,
        torch.randint_like,
        torch.multinomial,
        torch.normal,
        F.alpha_dropout,
        F.feature_alpha_dropout,
        F.dropout1d,
        F.dropout2d,
        F.dropout3d,
        F.rrelu,
        F.gumbel_softmax,
    }
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceBatching:
    """How many devices of a task train at once.

    Parameters
    ----------
    max_devices : int
        Devices per batched chunk at most; 1 trains them one after another (the reference path).
    memory_mib : int
        Activation memory a chunk may keep for backward: a chunk holds at most
        ``memory_mib / (batch_size * (depth + 1) * activation_bytes_per_sample_per_layer)`` devices.
    activation_bytes_per_sample_per_layer : int
        From the cost model (``CostModel.activation_bytes_per_sample_per_layer``), scaled to the
        run's sequence length.
    pack_tokens : bool
        Skip padding in the frozen linear layers of the trained layers (``runtime.token_packing``).
    """

    max_devices: int
    memory_mib: int
    activation_bytes_per_sample_per_layer: int
    pack_tokens: bool = True

    def chunk_size(self, batch_size: int, depth: int) -> int:
        """Devices per chunk for a task of ``batch_size`` samples a step at ``depth``."""
        per_device = batch_size * (depth + 1) * self.activation_bytes_per_sample_per_layer
        return max(1, min(self.max_devices, self.memory_mib * 2**20 // max(1, per_device)))


def device_batching(options: RunOptions, cost_model: CostModel) -> DeviceBatching:
    """The run's :class:`DeviceBatching`: ``options.batched_devices``, ``options.batch_memory_mib`` and
    ``options.pack_tokens``, with the cost model's activation bytes scaled linearly from its ``seq_len`` to
    ``options.max_seq_len``."""
    scaled = cost_model.activation_bytes_per_sample_per_layer * options.max_seq_len / cost_model.seq_len
    return DeviceBatching(
        max_devices=options.batched_devices,
        memory_mib=options.batch_memory_mib,
        activation_bytes_per_sample_per_layer=max(1, round(scaled)),
        pack_tokens=options.pack_tokens,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    """Rows of one step by device: device ``d`` owns rows ``starts[d] : starts[d] + counts[d]``."""

    counts: tuple[int, ...]
    row_device: torch.Tensor

    @property
    def total(self) -> int:
        return int(self.row_device.numel())

    @property
    def uniform(self) -> bool:
        return len(set(self.counts)) == 1

    def spans(self) -> Iterator[tuple[int, int, int]]:
        start = 0
        for device, count in enumerate(self.counts):
            yield device, start, count
            start += count


def _stacked_linear(step: list[_Layout], weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> Any:
    """(B2) ``F.linear`` with device ``d``'s ``weight[d]`` (``[D, out, in]``) on device ``d``'s rows of ``x``."""
    layout = step[0]
    assert x.shape[0] == layout.total, "a stacked linear sees the rows of every device"
    if layout.uniform:
        rows = x.reshape(len(layout.counts), -1, x.shape[-1])
        out = torch.bmm(rows, weight.transpose(1, 2))
        if bias is not None:
            out = out + bias.unsqueeze(1)
    else:
        rows = x.reshape(layout.total, -1, x.shape[-1])
        out = torch.bmm(rows, weight.index_select(0, layout.row_device).transpose(1, 2))
        if bias is not None:
            out = out + bias.index_select(0, layout.row_device).unsqueeze(1)
    return out.reshape(*x.shape[:-1], weight.shape[1])


class _PerDeviceRandomness(TorchFunctionMode):
    """(B5) Dropout drawn per device, from each device's own generator, on its own rows (``runtime.device_dropout``:
    the same masks as ``bernoulli_`` per device, for less; attention with dropout in one call)."""

    def __init__(self, generators: list[torch.Generator], step: list[_Layout]) -> None:
        super().__init__()
        self.generators, self.step = generators, step

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.dropout:
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            inplace = kwargs.get("inplace", args[3] if len(args) > 3 else False)
            x = args[0] if args else kwargs["input"]
            if training and 0 < p < 1 and not inplace and x.is_contiguous():
                self._check_rows(func, x)
                return x * draw_keep_masks(self._rows(), x.shape, 1 - p, x.dtype)
            if training and p > 0:
                self._check_rows(func, x)
                return self._per_device(func, args, kwargs)
        elif func is F.scaled_dot_product_attention:
            if kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0) > 0:
                self._check_rows(func, args[0] if args else kwargs["query"])
                call, rows = AttentionCall.parse(args, kwargs), self._rows()
                if call is not None and replica_admits(call, rows):
                    return attention_with_dropout(call, rows)
                return self._per_device(func, args, kwargs)
        elif func in _REFUSED:
            raise RuntimeError(f"{func.__name__} under batched device training: only dropout is drawn per device")
        return func(*args, **kwargs)

    def _check_rows(self, func: Any, x: Any) -> None:
        """Dropout is drawn per device on dim 0: a tensor whose dim 0 is not the step's rows cannot be split."""
        total = self.step[0].total
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] != total:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise RuntimeError(
                f"{func.__name__} under batched device training on a tensor of shape {shape}: its first dimension "
                f"must be the step's {total} rows to draw each device's masks; train with batched_devices=1"
            )

    def _rows(self) -> list[DeviceRows]:
        return [DeviceRows(start, count, self.generators[device]) for device, start, count in self.step[0].spans()]

    def _per_device(self, func: Any, args: Any, kwargs: Any) -> torch.Tensor:
        """``func`` once per device on its rows, under its generator's state as the global one. The rows are split
        in one call per argument (``torch.split``), whose backward concatenates the devices' gradients once, where
        a ``narrow`` per device would pad each device's gradient to every row and add them up."""
        layout = self.step[0]

        def parts(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == layout.total:
                return torch.split(value, layout.counts)
            return None

        split_args = [parts(a) for a in args]
        split_kwargs = {k: parts(v) for k, v in kwargs.items()}
        outputs = []
        for device in range(len(layout.counts)):
            torch.set_rng_state(self.generators[device].get_state())
            outputs.append(
                func(
                    *(a if p is None else p[device] for a, p in zip(args, split_args, strict=True)),
                    **{k: v if split_kwargs[k] is None else split_kwargs[k][device] for k, v in kwargs.items()},
                )
            )
            self.generators[device].set_state(torch.get_rng_state())
        return torch.cat(outputs)


def _linear_owners(model: AdaptedModel) -> dict[int, tuple[nn.Linear, str]]:
    """Parameter id -> (the ``nn.Linear`` that owns it, ``"weight"`` or ``"bias"``)."""
    owners: dict[int, tuple[nn.Linear, str]] = {}
    for module in model.peft_model.modules():
        if type(module) is nn.Linear:
            for attr in ("weight", "bias"):
                param = getattr(module, attr)
                if param is not None:
                    owners[id(param)] = (module, attr)
    return owners


def batching_supported(model: AdaptedModel) -> bool:
    """Whether every trainable tensor at the active depth belongs to a plain ``nn.Linear`` and the head
    has two or more labels (a single-label cross-entropy loss, (B3))."""
    owners = _linear_owners(model)
    num_labels = getattr(model.peft_model.config, "num_labels", 0)
    problem = getattr(model.peft_model.config, "problem_type", None)
    return (
        num_labels > 1
        and problem in (None, "single_label_classification")
        and all(id(p) in owners for p in model.trainable_parameters().values())
    )


@contextlib.contextmanager
def _stacked(model: AdaptedModel, stacks: dict[str, torch.Tensor], step: list[_Layout]) -> Iterator[None]:
    """(B2) Every owning ``nn.Linear`` computes with its stacked tensors while the context is open."""
    owners = _linear_owners(model)
    tensors: dict[int, dict[str, torch.Tensor]] = {}
    modules: dict[int, nn.Linear] = {}
    for key, param in model.trainable_parameters().items():
        module, attr = owners[id(param)]
        tensors.setdefault(id(module), {})[attr] = stacks[key]
        modules[id(module)] = module
    try:
        for ident, module in modules.items():
            weight, bias = tensors[ident]["weight"], tensors[ident].get("bias")
            assert bias is not None or module.bias is None, "a head trains its bias with its weight"
            module.forward = lambda x, w=weight, b=bias: _stacked_linear(step, w, b, x)  # type: ignore[method-assign]
        yield
    finally:
        for module in modules.values():
            del module.forward


def train_devices_batched(
    model: AdaptedModel,
    forward: Forward,
    start_state: AdapterState,
    device_indices: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    seeds: Sequence[int],
    local_steps: int,
    batch_size: int,
    learning_rate: float,
    optimizer: str = "adamw",
    attention_mask: torch.Tensor | None = None,
) -> list[DeviceUpdate]:
    """Train every device of ``device_indices`` from ``start_state`` at once; one update per device, in order.

    ``labels`` are the labels of every sample of the forward's data set (``TokenizedData.labels``);
    with its ``attention_mask`` too, the frozen linear layers skip padding tokens (B6; only for a model
    :func:`~hierfedlora.runtime.token_packing.packing_is_exact` accepts).

    The same contract as :func:`~hierfedlora.runtime.local_training.train_device` per device (the
    model at the group's depth; the caller's RNG untouched); see the module docstring for why the
    results agree. ``mean_step_s`` is the batched step's seconds divided by the devices.
    """
    assert len(device_indices) == len(seeds), "one seed per device"
    count = len(seeds)
    model.set_adapter_state(start_state)
    keys = list(model.trainable_parameters())
    stacks = {key: start_state[key].unsqueeze(0).repeat(count, *([1] * start_state[key].dim())) for key in keys}
    leaves = [stacks[key].requires_grad_(True) for key in keys]
    step_rule: torch.optim.Optimizer = (
        torch.optim.SGD(leaves, lr=learning_rate)
        if optimizer == "sgd"
        else torch.optim.AdamW(leaves, lr=learning_rate, weight_decay=0.0)
    )
    batches = [
        device_batches(indices, batch_size, torch.Generator().manual_seed(seed), num_batches=local_steps)
        for indices, seed in zip(device_indices, seeds, strict=True)
    ]
    losses = torch.zeros(count, dtype=torch.float64)
    step: list[_Layout] = []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        tokens = StepTokens()
        packing = contextlib.nullcontext() if attention_mask is None else packed_linears(model, tokens)
        with _stacked(model, stacks, step), packing, _PerDeviceRandomness(generators, step):
            for _ in range(local_steps):
                parts = [next(device) for device in batches]
                counts = tuple(int(part.numel()) for part in parts)
                step[:] = [_Layout(counts, torch.repeat_interleave(torch.arange(count), torch.tensor(counts)))]
                indices = torch.cat(parts)
                if attention_mask is not None:
                    tokens.set(attention_mask[indices])
                step_rule.zero_grad(set_to_none=True)
                logits = forward.train_logits(indices)
                targets = labels[indices]
                per_device = torch.stack(
                    [
                        F.cross_entropy(logits.narrow(0, start, n), targets.narrow(0, start, n))
                        for _, start, n in step[0].spans()
                    ]
                )
                per_device.sum().backward()
                step_rule.step()
                losses += per_device.detach().to(torch.float64)
    elapsed = time.perf_counter() - started
    return [
        DeviceUpdate(
            state={key: stacks[key][device].detach().clone() for key in keys},
            mean_loss=float(losses[device]) / local_steps,
            mean_step_s=elapsed / local_steps / count,
        )
        for device in range(count)
    ]
