"""Measure the real model on this host and return the per-layer :class:`CostModel` the planner uses.

What is measured (medians over ``repeats`` timed runs after warm-up; times per sample at
``batch_size`` x ``seq_len`` random tokens; the model in train mode, as a local step runs it):

(M1) ``layer_forward_s[l]``: layer ``l`` alone, LoRA off, under ``no_grad`` (a frozen layer), on the
     very inputs the model gives it (captured with a forward pre-hook, so any architecture works).
(M2) ``layer_backward_s[l]``: layer ``l`` alone with LoRA on, forward recording the graph plus
     backward to its input and adapters, minus (M1): what training the layer adds to its forward.
(M3) ``embedding_forward_s``: a whole frozen forward, from its start to the first layer's pre-hook.
(M4) ``head_step_s``: a head-only training step (every layer frozen: forward, loss, backward, AdamW on
     the head) minus ``b * (M3 + sum M1)``: the head's forward and backward, loss and optimizer.
(M5) ``layer_optimizer_s``: one AdamW step over one layer's LoRA tensors.
(M6) ``activation_bytes_per_sample_per_layer``: bytes autograd saves for backward in one trained
     layer (``torch.autograd.graph.saved_tensors_hooks``; distinct storages, weights excluded), the
     largest over layers.
(M7) Bytes: one layer's LoRA tensors and the head in fp32; the optimizer's gradient and two Adam
     moments per layer (3x the LoRA bytes); the frozen model's parameters and buffers.

So the depth-``d`` step ``b * (M3 + sum M1 + sum_top_d M2 + M4) + d * M5`` of ``planner.costs`` (C1)
is the head-only step plus what the per-layer measurements say training ``d`` layers adds. As a
self-check, a full-depth step is timed in the same rounds; a :class:`HierFedLoraWarning` says so
when (C1) misses it by more than 25% (on a busy host, timings drift). :func:`measure_step_times_s`
times real steps at any depths. The caller's RNG and thread count are left as they were.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hierfedlora.models.adapters import adapter_parameters, layer_of
from hierfedlora.models.base_delta import dense_bytes_per_layer
from hierfedlora.models.catalog import ModelSpec, find_layers, load_base_model, model_sha256
from hierfedlora.models.lora import AdaptedModel, check_depth, enable_lora_layers
from hierfedlora.planner.costs import step_time_s
from hierfedlora.planner.errors import HierFedLoraWarning, InvalidInputError, Issue
from hierfedlora.planner.rules import is_int
from hierfedlora.planner.types import CostModel

__all__ = ["host_description", "measure_cost_model", "measure_step_times_s"]

log = logging.getLogger(__name__)

_FP32_BYTES = 4
_WARMUP = 2
_SELF_CHECK_TOLERANCE = 0.25


def host_description() -> str:
    """CPU model, cores, torch threads and torch version of this host."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cores; {torch.get_num_threads()} torch threads; torch {torch.__version__}"


def _check_sizes(batch_size: object, seq_len: object, repeats: object) -> None:
    issues = [
        Issue(name, "an integer >= 1", value)
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("repeats", repeats))
        if not (is_int(value) and value >= 1)  # type: ignore[operator]
    ]
    if issues:
        raise InvalidInputError(issues)


@dataclasses.dataclass(frozen=True, slots=True)
class _Probe:
    """One timed measurement: ``prepare`` (untimed) sets which layers carry LoRA; ``run`` returns seconds."""

    name: str
    prepare: Callable[[], None]
    run: Callable[[], float]


def _interleaved_medians(probes: Sequence[_Probe], repeats: int) -> dict[str, float]:
    """Median seconds per probe, the probes taken in turn ``repeats`` times after warm-up.

    Taking them in turn, not each ``repeats`` times in a row, spreads a burst of load from other
    processes over many probes instead of letting it own one probe's every run.
    """
    for probe in probes:
        probe.prepare()
        for _ in range(_WARMUP):
            probe.run()
    times: dict[str, list[float]] = {probe.name: [] for probe in probes}
    for _ in range(repeats):
        for probe in probes:
            probe.prepare()
            times[probe.name].append(probe.run())
    return {name: statistics.median(values) for name, values in times.items()}


def _random_batch(model: AdaptedModel, spec: ModelSpec, batch_size: int, seq_len: int, seed: int) -> dict[str, Any]:
    config = model.peft_model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise InvalidInputError([Issue("seq_len", f"an integer in 1..{limit} (the model's positions)", seq_len)])
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, spec.num_labels, (batch_size,), generator=generator),
    }


_Call = tuple[tuple[Any, ...], dict[str, Any]]


def _capture_layer_calls(model: AdaptedModel, batch: dict[str, Any]) -> list[_Call]:
    """The positional and keyword inputs each layer receives in a forward over ``batch``."""
    _, layers = find_layers(model)
    calls: list[_Call] = []

    def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, kwargs))

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _frozen_layer_probe(model: AdaptedModel, index: int, call: _Call) -> _Probe:
    """(M1) Layer ``index`` alone, LoRA off, no graph."""
    layer = find_layers(model)[1][index]
    (hidden, *rest), kwargs = call

    def run() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            layer(hidden, *rest, **kwargs)
        return time.perf_counter() - start

    return _Probe(f"forward[{index}]", lambda: enable_lora_layers(model, []), run)


def _trained_layer_probe(model: AdaptedModel, index: int, call: _Call, saved_bytes: list[int]) -> _Probe:
    """(M2) + (M1) Layer ``index`` alone with LoRA on: forward with graph, backward; records (M6)."""
    layer = find_layers(model)[1][index]
    (hidden, *rest), kwargs = call
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}

    def run() -> float:
        stored: dict[int, int] = {}  # storage address -> bytes, so views of one tensor count once

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                stored[storage.data_ptr()] = storage.nbytes()
            return tensor

        source = hidden.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            output = layer(source, *rest, **kwargs)
        output = output[0] if isinstance(output, tuple) else output
        output.backward(torch.ones_like(output))
        seconds = time.perf_counter() - start
        saved_bytes.append(sum(stored.values()))
        for param in layer.parameters():
            param.grad = None
        return seconds

    return _Probe(f"trained[{index}]", lambda: enable_lora_layers(model, [index]), run)


def _embedding_probe(model: AdaptedModel, batch: dict[str, Any]) -> _Probe:
    """(M3) A frozen forward, from its start to the moment the first layer is called."""
    first = find_layers(model)[1][0]

    def run() -> float:
        marks: list[float] = []
        handle = first.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter()))
        try:
            start = time.perf_counter()
            with torch.no_grad():
                model(**batch)
        finally:
            handle.remove()
        return marks[0] - start

    return _Probe("embedding", lambda: enable_lora_layers(model, []), run)


def _step_probe(model: AdaptedModel, batch: dict[str, Any], depth: int) -> _Probe:
    """A whole local step at ``depth`` (0: head only): forward, loss, backward, AdamW, zero_grad."""
    total = model.num_layers
    trained = range(total - depth, total)
    params = adapter_parameters(model)
    optimizer = torch.optim.AdamW(
        [p for key, p in params.items() if (layer := layer_of(key)) is None or layer in trained], lr=1e-6
    )

    def run() -> float:
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return _Probe(f"step[{depth}]", lambda: enable_lora_layers(model, trained), run)


def _optimizer_probe(model: AdaptedModel) -> _Probe:
    """(M5) One AdamW step over the top layer's LoRA tensors (every layer's are the same size)."""
    params = adapter_parameters(model)
    top = model.num_layers - 1
    tensors = [p for key, p in params.items() if layer_of(key) == top]
    optimizer = torch.optim.AdamW(tensors, lr=1e-6)

    def run() -> float:
        for tensor in tensors:
            tensor.grad = torch.full_like(tensor, 1e-3)
        start = time.perf_counter()
        optimizer.step()
        seconds = time.perf_counter() - start
        for tensor in tensors:
            tensor.grad = None
        return seconds

    return _Probe("optimizer", lambda: None, run)


def _bytes_of(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_step_times_s(
    spec: ModelSpec, depths: Sequence[int], *, batch_size: int = 16, seq_len: int = 64, repeats: int = 9, seed: int = 0
) -> dict[int, float]:
    """Seconds of one real local step at each depth, the reference (C1) is checked against.

    A step is the whole forward in train mode, the loss, backward to the top ``d`` layers and AdamW on
    their LoRA and the head; medians over ``repeats``, the depths taken in turn.

    Raises
    ------
    InvalidInputError
        As :func:`measure_cost_model`; field ``depth`` outside ``1..num_layers``.
    """
    _check_sizes(batch_size, seq_len, repeats)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = load_base_model(spec, seed)
        adapted = AdaptedModel(model, spec, seed=seed).train()
        for depth in depths:
            check_depth(depth, adapted.num_layers)
        batch = _random_batch(adapted, spec, batch_size, seq_len, seed)
        medians = _interleaved_medians([_step_probe(adapted, batch, d) for d in depths], repeats)
    return {d: medians[f"step[{d}]"] for d in depths}


def measure_cost_model(
    spec: ModelSpec, *, batch_size: int = 16, seq_len: int = 64, repeats: int = 9, seed: int = 0
) -> CostModel:
    """Measure the real model of ``spec`` on this host: (M1)-(M7) above, as a :class:`CostModel`.

    Parameters
    ----------
    spec : ModelSpec
    batch_size, seq_len : int
        Samples per step and tokens per sample the times are measured at (random tokens).
    repeats : int
        Timed runs per measurement, after two warm-up runs; medians are kept.
    seed : int
        Seeds the head, the adapters, the tokens and dropout (inside a forked RNG).

    Raises
    ------
    InvalidInputError
        Fields ``batch_size``, ``seq_len``, ``repeats`` (integers >= 1; ``seq_len`` within the
        model's positions); as :func:`~hierfedlora.models.catalog.load_base_model`.
    """
    _check_sizes(batch_size, seq_len, repeats)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = load_base_model(spec, seed)
        base_bytes = _bytes_of([*model.parameters(), *model.buffers()])
        adapted = AdaptedModel(model, spec, seed=seed).train()
        total = adapted.num_layers
        batch = _random_batch(adapted, spec, batch_size, seq_len, seed)
        calls = _capture_layer_calls(adapted, batch)
        saved_bytes: list[int] = []
        probes = [_frozen_layer_probe(adapted, index, call) for index, call in enumerate(calls)]
        probes += [_trained_layer_probe(adapted, index, call, saved_bytes) for index, call in enumerate(calls)]
        probes += [_embedding_probe(adapted, batch), _step_probe(adapted, batch, 0), _optimizer_probe(adapted)]
        probes.append(_step_probe(adapted, batch, total))  # the self-check below
        medians = _interleaved_medians(probes, repeats)
    forward_s = [medians[f"forward[{index}]"] for index in range(total)]
    trained_s = [medians[f"trained[{index}]"] for index in range(total)]
    embedding_s = medians["embedding"]
    head_s = medians["step[0]"] - embedding_s - sum(forward_s)  # all per batch here
    params = adapter_parameters(adapted)
    lora_numel = sum(p.numel() for key, p in params.items() if layer_of(key) == total - 1)
    head_numel = sum(p.numel() for key, p in params.items() if key.startswith("head."))
    smallest = 1e-3 * min(forward_s)  # a timed difference can dip below zero under noise; layers need > 0
    cost = CostModel(
        model_name=spec.model_name,
        model_sha256=model_sha256(spec.path),
        measured_on=host_description(),
        num_layers=total,
        batch_size=batch_size,
        seq_len=seq_len,
        embedding_forward_s=embedding_s / batch_size,
        layer_forward_s=tuple(f / batch_size for f in forward_s),
        layer_backward_s=tuple(max(t - f, smallest) / batch_size for t, f in zip(trained_s, forward_s, strict=True)),
        head_step_s=max(head_s, 0.0) / batch_size,
        layer_optimizer_s=medians["optimizer"],
        adapter_bytes_per_layer=lora_numel * _FP32_BYTES,
        head_bytes=head_numel * _FP32_BYTES,
        activation_bytes_per_sample_per_layer=max(1, round(max(saved_bytes) / batch_size)),
        optimizer_bytes_per_layer=3 * lora_numel * _FP32_BYTES,
        base_model_bytes=base_bytes,
        lora_rank=spec.lora_rank,
        num_labels=spec.num_labels,
        dense_bytes_per_layer=dense_bytes_per_layer(adapted.peft_model) or None,
    )
    _check_full_step(cost, medians[f"step[{total}]"])
    return cost


def _check_full_step(cost: CostModel, measured_s: float) -> None:
    """Warn when (C1) misses the full-depth step timed in the same rounds by more than a quarter.

    The per-layer parts and the whole step were timed side by side, so a large miss means the host's
    load changed while it was measured (or per-step overhead dwarfs the layers, as in toy models).
    """
    predicted_s = step_time_s(cost, compute_scale=1.0, depth=cost.num_layers, batch_size=cost.batch_size)
    log.info("full-depth step: predicted %.4f s, measured %.4f s", predicted_s, measured_s)
    if not abs(predicted_s / measured_s - 1.0) <= _SELF_CHECK_TOLERANCE:
        warnings.warn(
            f"the cost model predicts {predicted_s:.4f} s for a full-depth step but one took {measured_s:.4f} s "
            "when timed alongside; the host was probably busy: measure again on a quiet host",
            HierFedLoraWarning,
            stacklevel=3,
        )
