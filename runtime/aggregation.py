"""Depth-aware aggregation of LoRA adapter states: FedAvg inside a group, a layer-wise merge across groups.

An adapter state maps names to tensors: ``layers.{l}.{module}.lora_A`` and ``.lora_B`` for layer ``l``
(0-based from the embeddings) and ``head.{param}`` for the classification head. A group of depth ``d``
trains layers ``L-d..L-1`` and the head, so its state holds only those keys.

(A1) Intra-group FedAvg. Devices ``i`` of one group hold ``n_i`` samples; every state has the same keys::

    theta[key] = sum_i (n_i / sum_j n_j) * theta_i[key]

(A2) Layer-wise merge across groups. Group ``k`` holds ``n_k`` samples; ``K(key)`` is the set of groups
whose state holds ``key``::

    w_k(key)   = n_k / sum_{j in K(key)} n_j   if k in K(key), else 0
    theta[key] = sum_k w_k(key) * theta_k[key] if K(key) is not empty, else theta_global[key]

    For every trained key the weights sum to one; when all groups have the same depth, (A2) is (A1)
    over the groups' states, and keys no group trained keep the global value.

LoRA factors are averaged separately, as FedLoRA-style and HierFedLoRA aggregation do: the merged update
``mean(B) @ mean(A)`` is not the mean of the devices' updates ``mean(B @ A)``. Averaging the factors keeps
the state small and the rank fixed; exact product aggregation (FedEx-LoRA, FLoRA) would need a residual
or a rank that grows with the number of devices.

Numerics: sums accumulate in float64 in the order the states are given and are cast back to the input
dtype, so for float32 (or narrower) states FedAvg of identical states returns them bit for bit and a key
trained by a single group keeps its values exactly. Inputs are never modified; outputs never alias them.

``layer_of`` lives here because ``models.adapters`` did not exist when this module was written; the key
contract is the one stated above.

Examples
--------
>>> import torch
>>> a = {"layers.1.query.lora_A": torch.tensor([0.0]), "head.bias": torch.tensor([0.0])}
>>> b = {"layers.1.query.lora_A": torch.tensor([4.0]), "head.bias": torch.tensor([4.0])}
>>> fedavg([a, b], [1, 3])["head.bias"]  # (1 * 0 + 3 * 4) / 4
tensor([3.])
>>> g = {"layers.0.query.lora_A": torch.tensor([9.0]), **a}
>>> merged = merge_across_groups(g, [b], [10])
>>> merged["layers.0.query.lora_A"], merged["layers.1.query.lora_A"]  # untouched, trained by one group
(tensor([9.]), tensor([4.]))
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from hierfedlora.models.adapters import AdapterState, layer_of
from hierfedlora.planner.errors import InvalidInputError, Issue, raise_if_any

__all__ = [
    "AdapterState",
    "Aggregator",
    "LayerwiseAggregator",
    "fedavg",
    "layer_of",
    "merge_across_groups",
    "merge_weights",
]


_KEY_RULE = "'layers.{l}.<module>.lora_A|lora_B' or 'head.<param>'"


def _is_sample_weight(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) > 0
    )


def _check_weights(weights: Sequence[float], count: int, what: str) -> list[Issue]:
    issues = []
    if len(weights) != count:
        issues.append(Issue("weights", f"one weight per {what} ({count})", f"{len(weights)} weights"))
    for idx, weight in enumerate(weights):
        if not _is_sample_weight(weight):
            issues.append(Issue(f"weights[{idx}]", "a finite number > 0 (a sample count)", weight))
    return issues


def _check_tensors(state: Mapping[str, object], path: str) -> list[Issue]:
    issues = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            issues.append(Issue(f"{path}[{key!r}]", "a floating-point tensor", type(value).__name__))
        try:
            layer_of(key)
        except InvalidInputError:
            issues.append(Issue(f"{path}", f"keys of the form {_KEY_RULE}", key))
    return issues


def _key_list(keys: set[str]) -> str:
    shown = sorted(keys)[:3]
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(repr(k) for k in shown) + more


def _check_shapes(
    reference: Mapping[str, torch.Tensor], state: Mapping[str, object], path: str, ref: str
) -> list[Issue]:
    issues = []
    for key, value in state.items():
        expected = reference.get(key)
        if isinstance(expected, torch.Tensor) and isinstance(value, torch.Tensor) and value.shape != expected.shape:
            issues.append(
                Issue(f"{path}[{key!r}]", f"shape {tuple(reference[key].shape)} (as in {ref})", tuple(value.shape))
            )
    return issues


def _weighted_sum(tensors: Sequence[torch.Tensor], fractions: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
    """``sum_i fractions[i] * tensors[i]`` accumulated in float64, in order, cast to ``dtype``."""
    total = tensors[0].to(torch.float64) * fractions[0]
    for tensor, fraction in zip(tensors[1:], fractions[1:], strict=True):
        total.add_(tensor.to(torch.float64), alpha=fraction)
    return total.to(dtype)


def fedavg(states: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
    """(A1) Weighted average of adapter states that hold the same keys (intra-group aggregation).

    Parameters
    ----------
    states : sequence of AdapterState
        One state per device; same keys, shapes and floating dtypes.
    weights : sequence of float
        The devices' sample counts (normalised here), each finite and > 0.

    Returns
    -------
    AdapterState
        New tensors, keys in the order of ``states[0]``.

    Raises
    ------
    InvalidInputError
        No states, a weight count that differs from the state count, a weight that is not a finite
        number > 0, a key missing from or extra in some state (named), a shape that differs, a value
        that is not a floating-point tensor, or a key outside the adapter contract. All at once.
    """
    if not states:
        raise InvalidInputError([Issue("states", "a non-empty list of adapter states", list(states))])
    issues = _check_weights(weights, len(states), "state")
    reference = states[0]
    issues += _check_tensors(reference, "states[0]")
    for idx, state in enumerate(states[1:], start=1):
        missing, extra = set(reference) - set(state), set(state) - set(reference)
        if missing:
            issues.append(Issue(f"states[{idx}]", "the same keys as states[0]", f"no {_key_list(missing)}"))
        if extra:
            issues.append(Issue(f"states[{idx}]", "the same keys as states[0]", f"extra {_key_list(extra)}"))
        issues += _check_tensors({k: v for k, v in state.items() if k not in extra}, f"states[{idx}]")
        issues += _check_shapes(reference, state, f"states[{idx}]", "states[0]")
    raise_if_any(issues)
    total = math.fsum(float(w) for w in weights)
    fractions = [float(w) / total for w in weights]
    return {key: _weighted_sum([s[key] for s in states], fractions, reference[key].dtype) for key in reference}


def merge_weights(
    global_state: AdapterState, group_states: Sequence[AdapterState], weights: Sequence[float]
) -> dict[str, tuple[float, ...]]:
    """(A2) The effective weight of every group for every key some group trained.

    Returns
    -------
    dict of str to tuple of float
        For each key of ``global_state`` held by at least one group (in ``global_state``'s order),
        one weight per group: ``n_k`` renormalised over the groups holding the key, 0 for the others.
        They sum to one (up to rounding). Keys no group trained are absent.

    Raises
    ------
    InvalidInputError
        As :func:`merge_across_groups`.

    Examples
    --------
    >>> import torch
    >>> g = {"layers.0.q.lora_A": torch.zeros(1), "layers.1.q.lora_A": torch.zeros(1)}
    >>> deep, shallow = dict(g), {"layers.1.q.lora_A": torch.ones(1)}
    >>> merge_weights(g, [deep, shallow], [1, 3])
    {'layers.0.q.lora_A': (1.0, 0.0), 'layers.1.q.lora_A': (0.25, 0.75)}
    """
    _check_merge(global_state, group_states, weights)
    result: dict[str, tuple[float, ...]] = {}
    for key in global_state:
        holders = [k for k, state in enumerate(group_states) if key in state]
        if holders:
            total = math.fsum(float(weights[k]) for k in holders)
            result[key] = tuple(float(weights[k]) / total if k in holders else 0.0 for k in range(len(group_states)))
    return result


def _check_merge(global_state: AdapterState, group_states: Sequence[AdapterState], weights: Sequence[float]) -> None:
    issues = _check_weights(weights, len(group_states), "group state")
    issues += _check_tensors(global_state, "global_state")
    for idx, state in enumerate(group_states):
        unknown = set(state) - set(global_state)
        if unknown:
            issues.append(Issue(f"group_states[{idx}]", "only keys of the global state", f"extra {_key_list(unknown)}"))
        issues += _check_tensors({k: v for k, v in state.items() if k not in unknown}, f"group_states[{idx}]")
        issues += _check_shapes(global_state, state, f"group_states[{idx}]", "global_state")
    raise_if_any(issues)


def merge_across_groups(
    global_state: AdapterState, group_states: Sequence[AdapterState], weights: Sequence[float]
) -> AdapterState:
    """(A2) Merge group adapters of different depths key by key into a full global state.

    Parameters
    ----------
    global_state : AdapterState
        The current global adapters: every key any group may train.
    group_states : sequence of AdapterState
        One state per group (its intra-group FedAvg); keys a subset of ``global_state``'s.
    weights : sequence of float
        The groups' sample counts, each finite and > 0.

    Returns
    -------
    AdapterState
        New tensors for every key of ``global_state``, in its order: trained keys averaged over the
        groups that hold them (weights from :func:`merge_weights`), the others copies of the global value;
        each in the global value's dtype.

    Raises
    ------
    InvalidInputError
        A weight count that differs from the group count, a weight that is not a finite number > 0,
        a group key the global state lacks (named), a shape that differs from the global one, a value
        that is not a floating-point tensor, or a key outside the adapter contract. All at once.
    """
    fractions = merge_weights(global_state, group_states, weights)
    merged: AdapterState = {}
    for key, value in global_state.items():
        if key not in fractions:
            merged[key] = value.clone()
            continue
        holders = [k for k, fraction in enumerate(fractions[key]) if fraction > 0]
        tensors = [group_states[k][key] for k in holders]
        merged[key] = _weighted_sum(tensors, [fractions[key][k] for k in holders], value.dtype)
    return merged


@runtime_checkable
class Aggregator(Protocol):
    """How adapters are aggregated inside a group and merged across groups (an extension point)."""

    def fedavg(self, states: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
        """Aggregate the states of one group's devices (same keys), weighted by sample counts."""
        ...

    def merge_across_groups(
        self, global_state: AdapterState, group_states: Sequence[AdapterState], weights: Sequence[float]
    ) -> AdapterState:
        """Merge groups' states (possibly of different depths) into a full global state."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class LayerwiseAggregator:
    """The default :class:`Aggregator`: FedAvg (A1) inside groups, the layer-wise merge (A2) across them."""

    def fedavg(self, states: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
        """See :func:`fedavg`."""
        return fedavg(states, weights)

    def merge_across_groups(
        self, global_state: AdapterState, group_states: Sequence[AdapterState], weights: Sequence[float]
    ) -> AdapterState:
        """See :func:`merge_across_groups`."""
        return merge_across_groups(global_state, group_states, weights)
