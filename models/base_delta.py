"""Base-weight deltas on the one shared model: FedEx-LoRA's residual and FLoRA's merge, applied in place.

A base delta (``runtime.aggregation_rules.BaseDelta``) maps a LoRA module ``layers.{l}.<module>`` to a
tensor ``D`` of shape ``(out, in)`` in the units of ``B @ A``. The module's effective weight is
``W0 + s * (B @ A + D)``, with ``s`` peft's scaling of that module (``alpha / r``), so applying ``D`` means
``W0 += s * D`` on the frozen base layer (transposed for GPT-2's ``Conv1D``, which stores ``(in, out)``).

:func:`applied_base_delta` applies a delta for the duration of a ``with`` block and puts the very same
bits of ``W0`` back after, so the model outside the block is always the pristine base: the run state is
the delta (checkpointed by the engine), never a modified model, and all simulated devices share one base
model: only the touched modules' weights are copied, once per block, not once per device.

Examples
--------
>>> module_keys({"layers.1.q.lora_A": None, "layers.1.q.lora_B": None, "head.bias": None})
('layers.1.q',)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from hierfedlora.models.adapters import layer_of
from hierfedlora.models.catalog import find_layers
from hierfedlora.planner.errors import InvalidInputError, Issue

__all__ = ["add_deltas", "applied_base_delta", "base_layers", "dense_bytes_per_layer", "module_keys"]

_ADAPTER = "default"


def module_keys(keys: object) -> tuple[str, ...]:
    """The LoRA modules (``layers.{l}.<module>``) named by adapter keys, in order, once each."""
    seen: dict[str, None] = {}
    for key in keys:  # type: ignore[attr-defined]
        if layer_of(key) is not None:
            seen[key.rsplit(".", 1)[0]] = None
    return tuple(seen)


def base_layers(model: nn.Module) -> dict[str, tuple[nn.Module, float]]:
    """Every LoRA module's frozen base layer and peft scaling, by module key ``layers.{l}.<module>``."""
    from peft.tuners.lora import LoraLayer

    layers_name, _ = find_layers(model)
    prefix = layers_name + "."
    found: dict[str, tuple[nn.Module, float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and name.startswith(prefix) and _ADAPTER in module.lora_A:
            index, _, path = name[len(prefix) :].partition(".")
            found[f"layers.{index}.{path}"] = (module.get_base_layer(), float(module.scaling[_ADAPTER]))
    return found


def dense_bytes_per_layer(model: nn.Module) -> int:
    """Bytes of the largest layer's LoRA target matrices (what FedEx-LoRA's residual of one layer moves)."""
    per_layer: dict[str, int] = {}
    for module, (base, _) in base_layers(model).items():
        layer = module.split(".", 2)[1]
        per_layer[layer] = per_layer.get(layer, 0) + base.weight.numel() * base.weight.element_size()
    return max(per_layer.values(), default=0)


def add_deltas(*deltas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sum of base deltas, module by module (a module absent from one counts as zero there)."""
    total: dict[str, torch.Tensor] = {}
    for delta in deltas:
        for module, value in delta.items():
            total[module] = total[module] + value if module in total else value.clone()
    return total


@contextlib.contextmanager
def applied_base_delta(model: nn.Module, delta: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, every module's base weight is ``W0 + s * delta[module]``; after it, ``W0`` bit for bit.

    Raises
    ------
    InvalidInputError
        A module the model has no LoRA on, or a delta whose shape is not the module's ``(out, in)``;
        nothing is changed then.
    """
    if not delta:
        yield
        return
    layers = base_layers(model)
    issues, plan = [], []
    for module, value in delta.items():
        if module not in layers:
            issues.append(Issue(f"base_delta[{module!r}]", "a module that carries LoRA", module))
            continue
        base, scaling = layers[module]
        weight = base.weight
        transposed = type(base).__name__ == "Conv1D"
        shape = tuple(weight.shape[::-1]) if transposed else tuple(weight.shape)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            issues.append(
                Issue(f"base_delta[{module!r}]", f"a tensor of shape {shape}", getattr(value, "shape", value))
            )
            continue
        plan.append((weight, value.T if transposed else value, scaling))
    if issues:
        raise InvalidInputError(issues)
    saved = [weight.detach().clone() for weight, _, _ in plan]
    try:
        with torch.no_grad():
            for weight, value, scaling in plan:
                weight.add_(value.to(weight.dtype), alpha=scaling)
        yield
    finally:
        with torch.no_grad():
            for (weight, _, _), original in zip(plan, saved, strict=True):
                weight.copy_(original)
