"""peft LoRA on the top ``d`` layers, and one model in memory that serves every depth.

:func:`lora_config` builds peft's ``LoraConfig`` for layers ``L-d..L-1``: ``target_modules`` from the
:class:`~hierfedlora.models.catalog.ModelSpec`, ``layers_to_transform`` the layer indices and
``layers_pattern`` the name of the model's layer list (``layer`` for BERT, ``h`` for GPT-2, ``layers``
for LLaMA), so peft matches ``...layer.{l}.attention.self.query`` and friends; ``modules_to_save`` is
the classification head, which every depth trains. :func:`attach_lora` makes a fresh peft model at one
depth.

:class:`AdaptedModel` is what the runtime holds: the base model with peft LoRA attached **once, at the
largest depth it will serve**; :meth:`AdaptedModel.set_depth` then picks the active depth ``d`` by
disabling the LoRA modules of layers below ``L-d`` (peft's per-module ``enable_adapters(False)``). A
device is its data plus its :data:`~hierfedlora.models.adapters.AdapterState`, loaded with
:meth:`AdaptedModel.set_adapter_state` and read back with :meth:`AdaptedModel.get_adapter_state`.
:meth:`AdaptedModel.set_layers` makes any set of layers live instead (FedRA's random layers): the depth
is then ``L - min(layers)``, the lowest trained layer, and layers above it that are not listed run with
LoRA disabled, exactly as layers below the depth do.

Why this is exact (the same outputs and gradients as a fresh peft model built at depth ``d``):

- A disabled peft ``lora.Linear`` returns ``self.base_layer(x)``: the very call a layer without LoRA
  makes on the same frozen ``nn.Linear``, so forward outputs are bit for bit the same. Zeroing ``B``
  instead would leave ``x + 0 * A x`` (different rounding, a live graph) and still train ``A``.
- ``enable_adapters(False)`` also sets ``requires_grad=False`` on that layer's LoRA tensors, so they
  take no part in autograd: no gradient reaches them, an optimizer over
  :meth:`AdaptedModel.trainable_parameters` never sees them, and the frozen prefix records no graph,
  as in the fresh model. Active layers run peft's unchanged LoRA path.
- The base weights are shared, never copied: one model serves all devices and depths.

Examples
--------
>>> check_depth(7, 6)
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: depth must be an integer in 1..6; got 7
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from hierfedlora.models.adapters import (
    AdapterState,
    adapter_parameters,
    initial_adapter_state,
    layer_of,
    set_adapter_state,
)
from hierfedlora.models.catalog import (
    ModelSpec,
    find_layers,
    head_names,
    load_base_model,
    num_layers,
    resolve_target_modules,
)
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.rules import is_int

__all__ = ["AdaptedModel", "attach_lora", "check_depth", "enable_lora_layers", "load_adapted_model", "lora_config"]


def check_depth(depth: object, max_depth: int) -> int:
    """Return ``depth`` if it is an integer in ``1..max_depth``.

    Raises
    ------
    InvalidInputError
        Field ``depth`` otherwise.
    """
    if not (is_int(depth) and 1 <= depth <= max_depth):  # type: ignore[operator]
        raise InvalidInputError([Issue("depth", f"an integer in 1..{max_depth}", depth)])
    return depth  # type: ignore[return-value]


def lora_config(model: nn.Module, spec: ModelSpec, depth: int) -> Any:
    """peft ``LoraConfig`` putting LoRA on the top ``depth`` layers of ``model`` and training its head.

    Raises
    ------
    InvalidInputError
        Field ``depth`` outside ``1..num_layers``; field ``target_modules`` naming no module in the layers.
    """
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    total = num_layers(model)
    check_depth(depth, total)
    layers_name, layers = find_layers(model)
    targets = resolve_target_modules(model, spec)
    # GPT-2's Conv1D stores its weight transposed; peft must be told, or it warns and flips it itself
    fan_in_fan_out = any(
        isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in targets for name, module in layers.named_modules()
    )
    return LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(targets),
        layers_to_transform=list(range(total - depth, total)),
        layers_pattern=layers_name.rsplit(".", 1)[-1],
        modules_to_save=list(head_names(model)),
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
    )


def attach_lora(model: nn.Module, spec: ModelSpec, depth: int, *, seed: int = 0) -> Any:
    """A fresh peft model with LoRA on the top ``depth`` layers (``model`` is modified in place).

    LoRA starts from :func:`~hierfedlora.models.adapters.initial_adapter_state` for ``seed`` (peft's
    init: ``A`` Kaiming-uniform, ``B`` zero), not from the global RNG; the head keeps the model's
    values (seeded by :func:`~hierfedlora.models.catalog.load_base_model` when the checkpoint had none).

    Raises
    ------
    InvalidInputError
        As :func:`lora_config`.
    """
    from peft import get_peft_model

    config = lora_config(model, spec, depth)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # peft draws its init from the global RNG
        # peft 0.21 asks transformers 5 a deprecated question; the answer is right, the warning is noise
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    initial = initial_adapter_state(peft_model, depth, seed)
    set_adapter_state(peft_model, {key: value for key, value in initial.items() if layer_of(key) is not None})
    return peft_model


def enable_lora_layers(model: nn.Module, layers: Collection[int]) -> None:
    """Enable LoRA on exactly the listed layer indices of a peft model; disable (and freeze) the rest."""
    from peft.tuners.lora import LoraLayer

    layers_name, _ = find_layers(model)
    prefix = layers_name + "."
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and name.startswith(prefix):
            module.enable_adapters(int(name[len(prefix) :].split(".", 1)[0]) in layers)


class AdaptedModel(nn.Module):
    """One base model with LoRA on its top ``max_depth`` layers, serving any depth ``1..max_depth``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        From :func:`~hierfedlora.models.catalog.load_base_model`; LoRA is injected into it in place.
    spec : ModelSpec
    max_depth : int or None
        Largest depth served (``None``: all layers).
    seed : int
        Seeds the initial adapters (see :func:`attach_lora`).

    Raises
    ------
    InvalidInputError
        Field ``depth`` if ``max_depth`` is outside ``1..num_layers``; as :func:`lora_config`.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, *, max_depth: int | None = None, seed: int = 0) -> None:
        super().__init__()
        total = num_layers(model)
        self.num_layers = total
        self.max_depth = check_depth(total if max_depth is None else max_depth, total)
        self.spec = spec
        self.peft_model = attach_lora(model, spec, self.max_depth, seed=seed)
        self._depth = self.max_depth
        self._layers = tuple(range(total - self.max_depth, total))
        self._by_key = adapter_parameters(self.peft_model)  # the module tree is fixed from here on

    @property
    def depth(self) -> int:
        """The active depth ``num_layers - min(layers)``: the lowest live layer bounds the frozen prefix."""
        return self._depth

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers with live LoRA, ascending (the top ``depth`` after :meth:`set_depth`)."""
        return self._layers

    def set_depth(self, depth: int) -> None:
        """Make ``depth`` active; layers below it compute exactly their frozen base output.

        Raises
        ------
        InvalidInputError
            Field ``depth`` outside ``1..max_depth``.
        """
        check_depth(depth, self.max_depth)
        self._activate(tuple(range(self.num_layers - depth, self.num_layers)))

    def set_layers(self, layers: Collection[int]) -> None:
        """Make LoRA live on exactly ``layers``; every other layer computes its frozen base output.

        The depth becomes ``num_layers - min(layers)`` (what the frozen-prefix cache keys on).

        Raises
        ------
        InvalidInputError
            Field ``layers`` unless a non-empty collection of distinct integers within the layers
            that carry LoRA (``num_layers - max_depth .. num_layers - 1``).
        """
        lowest = self.num_layers - self.max_depth
        chosen = sorted(layers) if all(is_int(x) for x in layers) else None
        if not chosen or len(set(chosen)) != len(chosen) or not lowest <= chosen[0] <= chosen[-1] < self.num_layers:
            expected = f"a non-empty set of distinct layer indices in {lowest}..{self.num_layers - 1} (LoRA's layers)"
            raise InvalidInputError([Issue("layers", expected, tuple(layers))])
        self._activate(tuple(chosen))

    def _activate(self, layers: tuple[int, ...]) -> None:
        enable_lora_layers(self.peft_model, layers)
        self._layers = layers
        self._depth = self.num_layers - layers[0]

    def adapter_keys(self) -> tuple[str, ...]:
        """Keys of the active layers' state (their LoRA, then the head)."""
        live = set(self._layers)
        return tuple(key for key in self._by_key if (layer := layer_of(key)) is None or layer in live)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters a device at the active depth trains, by adapter key (give these to the optimizer)."""
        return {key: self._by_key[key] for key in self.adapter_keys()}

    def get_adapter_state(self) -> AdapterState:
        """A detached copy of the active depth's adapter and head tensors."""
        return {key: param.detach().clone() for key, param in self.trainable_parameters().items()}

    def set_adapter_state(self, state: AdapterState) -> None:
        """Load a device's state; its keys must be exactly the active depth's.

        Raises
        ------
        InvalidInputError
            Listing missing and unexpected keys, or tensors of the wrong shape.
        """
        expected = set(self.adapter_keys())
        contiguous = self._layers == tuple(range(self.num_layers - self._depth, self.num_layers))
        what = f"a depth-{self._depth} state" if contiguous else f"a state of layers {list(self._layers)}"
        issues = [
            Issue(f"state[{key!r}]", f"present (a key of {what})", "missing") for key in sorted(expected - set(state))
        ]
        issues += [Issue(f"state[{key!r}]", f"a key of {what}", key) for key in sorted(set(state) - expected)]
        if issues:
            raise InvalidInputError(issues)
        set_adapter_state(self.peft_model, state)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward (``input_ids=..., attention_mask=..., labels=...``)."""
        return self.peft_model(*args, **kwargs)


def load_adapted_model(spec: ModelSpec, *, max_depth: int | None = None, seed: int = 0) -> tuple[AdaptedModel, Any]:
    """Load the base model offline and wrap it: the one model a run holds, and its tokenizer.

    Raises
    ------
    InvalidInputError
        As :func:`~hierfedlora.models.catalog.load_base_model` and :class:`AdaptedModel`.
    """
    model, tokenizer = load_base_model(spec, seed)
    return AdaptedModel(model, spec, max_depth=max_depth, seed=seed), tokenizer
