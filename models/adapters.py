"""LoRA and head state as plain tensors keyed by layer: what devices hold, send and aggregate.

An :data:`AdapterState` maps keys to tensors:

- ``layers.{l}.{module}.lora_A`` and ``layers.{l}.{module}.lora_B``: the LoRA factors of ``module``
  (its path inside the layer, e.g. ``attention.self.query``) in layer ``l``, counted from 0 next to
  the embeddings. ``lora_A`` is ``(r, in_features)``, ``lora_B`` is ``(out_features, r)``, as in peft.
- ``head.{param}``: the trainable copy of a head parameter, by its name in the task model
  (``head.classifier.weight``).

A depth-``d`` state holds the top ``d`` layers' keys and the head. This is the contract with
``runtime/aggregation.py``: it averages per key, so states of different depths merge layer by layer.
Every function here works on a peft model or on anything wrapping one (an ``AdaptedModel``).

Examples
--------
>>> layer_of("layers.5.attention.self.value.lora_B"), layer_of("head.classifier.weight")
(5, None)
>>> state_bytes({"head.classifier.bias": torch.zeros(26)})
104
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping

import torch
from torch import nn

from hierfedlora.models.catalog import find_layers, head_init_std, init_head_values
from hierfedlora.planner.errors import InvalidInputError, Issue

__all__ = [
    "AdapterState",
    "adapter_keys",
    "adapter_parameters",
    "get_adapter_state",
    "initial_adapter_state",
    "layer_of",
    "lora_layers",
    "set_adapter_state",
    "state_bytes",
    "truncate_rank",
]

AdapterState = dict[str, torch.Tensor]
"""Adapter tensors by key: ``layers.{l}.{module}.lora_A|lora_B`` and ``head.{param}``."""

_ADAPTER = "default"  # the one peft adapter name we use
_LAYER_KEY = re.compile(r"layers\.(\d+)\.\S+\.lora_[AB]$")
_KEY_RULE = "'layers.{l}.<module>.lora_A|lora_B' or 'head.<param>'"


def layer_of(key: str) -> int | None:
    """The layer index of an adapter key (0 next to the embeddings); ``None`` for a head key.

    Raises
    ------
    InvalidInputError
        If ``key`` follows neither form of the contract.
    """
    if isinstance(key, str) and key.startswith("head.") and len(key) > len("head."):
        return None
    match = _LAYER_KEY.match(key) if isinstance(key, str) else None
    if match is None:
        raise InvalidInputError([Issue("key", _KEY_RULE, key)])
    return int(match.group(1))


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the tensors in ``state`` (what one transfer of it moves)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def _task_prefix(model: nn.Module) -> str:
    """Name of the outermost transformers model inside ``model`` (``""`` if it is one)."""
    from transformers import PreTrainedModel

    for name, module in model.named_modules():
        if isinstance(module, PreTrainedModel):
            return name
    raise InvalidInputError([Issue("model", "a transformers model or a wrapper of one", type(model).__name__)])


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every LoRA factor and trainable head parameter of a peft model, by adapter key (layers in order)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    layers_name, _ = find_layers(model)
    prefix, task = layers_name + ".", _task_prefix(model)
    found: dict[str, nn.Parameter] = {}
    head: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and name.startswith(prefix) and _ADAPTER in module.lora_A:
            index, _, path = name[len(prefix) :].partition(".")
            for factor in ("lora_A", "lora_B"):
                weight = getattr(module, factor)[_ADAPTER].weight
                assert isinstance(weight, nn.Parameter)  # peft keeps LoRA factors as nn.Linear weights
                found[f"layers.{index}.{path}.{factor}"] = weight
        elif isinstance(module, ModulesToSaveWrapper) and _ADAPTER in module.modules_to_save:
            head_name = name[len(task) + 1 :] if task else name
            for param_name, param in module.modules_to_save[_ADAPTER].named_parameters():
                head[f"head.{head_name}.{param_name}"] = param
    return {**found, **head}


def lora_layers(model: nn.Module) -> tuple[int, ...]:
    """Indices of the layers that carry LoRA, ascending."""
    return tuple(sorted({layer for key in adapter_parameters(model) if (layer := layer_of(key)) is not None}))


def adapter_keys(model: nn.Module, depth: int) -> tuple[str, ...]:
    """Keys of a depth-``depth`` state of ``model``: the top ``depth`` layers' LoRA, then the head.

    Raises
    ------
    InvalidInputError
        Field ``depth`` unless ``1 <= depth`` and the top ``depth`` layers all carry LoRA.
    """
    total = len(find_layers(model)[1])
    keys = tuple(adapter_parameters(model))
    carried = {layer_of(k) for k in keys} - {None}
    deepest = next((d for d in range(total, 0, -1) if set(range(total - d, total)) <= carried), 0)
    if not (isinstance(depth, int) and not isinstance(depth, bool) and 1 <= depth <= deepest):
        raise InvalidInputError([Issue("depth", f"an integer in 1..{deepest} (the layers that carry LoRA)", depth)])
    return tuple(k for k in keys if (layer := layer_of(k)) is None or layer >= total - depth)


def get_adapter_state(model: nn.Module, depth: int) -> AdapterState:
    """A detached copy of the top ``depth`` layers' LoRA tensors and the head.

    Raises
    ------
    InvalidInputError
        As :func:`adapter_keys`.
    """
    params = adapter_parameters(model)
    return {key: params[key].detach().clone() for key in adapter_keys(model, depth)}


def set_adapter_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy the tensors of ``state`` into the model's adapters (any subset of its keys).

    Raises
    ------
    InvalidInputError
        Listing every key the model does not have and every value that is not a tensor of the
        parameter's shape; nothing is copied then.
    """
    params = adapter_parameters(model)
    carried = lora_layers(model)
    where = f"layers {carried[0]}..{carried[-1]} or the head" if carried else "the head"
    issues = []
    for key, value in state.items():
        if key not in params:
            issues.append(Issue(f"state[{key!r}]", f"a key of this model's adapters ({where})", key))
        elif not isinstance(value, torch.Tensor) or value.shape != params[key].shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            issues.append(Issue(f"state[{key!r}]", f"a tensor of shape {tuple(params[key].shape)}", got))
    if issues:
        raise InvalidInputError(issues)
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


def initial_adapter_state(model: nn.Module, depth: int, seed: int) -> AdapterState:
    """The seeded starting state at ``depth``: peft's LoRA init and a fresh head.

    ``lora_A`` is Kaiming-uniform (``a = sqrt(5)``, peft's default), ``lora_B`` zero, so the adapted
    model starts equal to the base model; the head is :func:`~hierfedlora.models.catalog.init_head_values`
    for ``seed``, the same head :func:`~hierfedlora.models.catalog.load_base_model` draws for ``seed``.
    Layer ``l``'s ``lora_A`` depends only on ``seed`` and its key, not on ``depth``.

    Raises
    ------
    InvalidInputError
        As :func:`adapter_keys`.
    """
    params = adapter_parameters(model)
    keys = adapter_keys(model, depth)
    head_shapes = {key[len("head.") :]: params[key].shape for key in keys if key.startswith("head.")}
    head = init_head_values(head_shapes, seed=seed, std=head_init_std(model))
    state: AdapterState = {}
    for key in keys:
        param = params[key]
        if key.startswith("head."):
            state[key] = head[key[len("head.") :]].to(param.dtype)
        elif key.endswith("lora_A"):
            generator = torch.Generator().manual_seed(_key_seed(seed, key))
            state[key] = nn.init.kaiming_uniform_(
                torch.empty(param.shape, dtype=param.dtype), a=math.sqrt(5), generator=generator
            )
        else:
            state[key] = torch.zeros(param.shape, dtype=param.dtype)
    return state


def _key_seed(seed: int, key: str) -> int:
    """A seed per (seed, key), stable across processes (``hash`` of a str is salted per process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


def truncate_rank(state: Mapping[str, torch.Tensor], rank: int) -> AdapterState:
    """A copy of ``state`` whose LoRA keeps only its first ``rank`` rank components (HetLoRA's truncation).

    Rows ``rank:`` of every ``lora_A`` (``(r, in)``) and columns ``rank:`` of every ``lora_B``
    (``(out, r)``) are set to zero; head tensors are copied unchanged. With both factors of a
    component zero, its gradients are exactly zero (``dA[j] = B[:, j]^T (...)``, ``dB[:, j] = (...) A[j]``),
    so AdamW without weight decay and SGD leave it zero: a device trains rank ``rank`` inside the
    full-rank tensors, and the key-wise weighted merge of such states is HetLoRA's zero-padding
    aggregation.

    Raises
    ------
    InvalidInputError
        Field ``rank`` unless an integer >= 1; a key outside the contract (as :func:`layer_of`).

    Examples
    --------
    >>> state = truncate_rank({"layers.0.q.lora_A": torch.ones(3, 2), "layers.0.q.lora_B": torch.ones(2, 3)}, 1)
    >>> state["layers.0.q.lora_A"].sum().item(), state["layers.0.q.lora_B"][:, 0].tolist()
    (2.0, [1.0, 1.0])
    """
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
        raise InvalidInputError([Issue("rank", "an integer >= 1", rank)])
    truncated: AdapterState = {}
    for key, value in state.items():
        copy = value.detach().clone()
        if layer_of(key) is not None:
            if key.endswith("lora_A"):
                copy[rank:] = 0
            else:
                copy[:, rank:] = 0
        truncated[key] = copy
    return truncated
