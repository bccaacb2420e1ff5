"""Named aggregation rules for LoRA adapters, one interface for intra-group and cross-group aggregation.

Every rule maps inputs ``(state_k, delta_k, n_k)`` and the current global state to one output
``(state, delta)``. ``state_k`` is an adapter state (``models.adapters``: ``layers.{l}.<module>.lora_A|lora_B``
and ``head.<param>``) whose keys are a subset of the global state's, so inputs may have different depths.
``delta_k`` is a *base delta*: per LoRA module ``m`` (key ``layers.{l}.<module>``) a tensor ``D`` of shape
``(out, in)`` in the units of the product ``B @ A``. The effective weight of module ``m`` is::

    W_eff(m) = W0(m) + s(m) * (B(m) @ A(m) + D(m))              s(m) = peft's scaling, alpha / r

Rules never see ``W0`` or ``s``: they work on the product-unit term ``P(m) = B @ A + D`` (see
:func:`effective_products`). The runtime adds ``s * D`` to the one shared base model (``models.base_delta``).

Per module and per head key, only the inputs that hold it (``K(key)``) take part, as in the layer-wise
merge (A2) of ``runtime.aggregation``; a key no input holds keeps the global value, and its module gets no
delta. ``w_k`` are the sample weights ``n_k`` renormalised over ``K(key)`` (HetLoRA: see below). With
``P_k = B_k A_k + D_k``, the rules are:

``fedavg``  (McMahan et al. 2017; today's rule, A1/A2): ``B = sum w_k B_k``, ``A = sum w_k A_k``,
    ``D = sum w_k D_k``. Not exact: ``mean(B) @ mean(A) != mean(B @ A)``.
``ffa``  FFA-LoRA (Sun et al., arXiv 2403.12313): ``A`` stays frozen at its shared initialisation and only
    ``B`` (and the head) is trained and exchanged: ``B = sum w_k B_k``, ``A`` = the global ``A``,
    ``D = sum w_k D_k``. Exact because every input's ``A`` is the global one. Inputs trained at a lower rank
    (HetLoRA's truncation) may carry zero rows in ``A`` where their ``B`` columns are zero too; any other
    difference from the global ``A`` is refused. The paper also fixes the scaling alpha large; we keep
    the run's alpha (a choice).
``fedex``  FedEx-LoRA (Singhal et al., arXiv 2410.09432): ``B``, ``A`` averaged as in FedAvg, and the
    residual goes into the frozen weight: ``D = sum w_k P_k - B @ A``. Exact.
``flora``  FLoRA (Wang et al., arXiv 2409.05976): the stacked modules ``[w_1 B_1 | ... | w_K B_K]`` and
    ``[A_1; ...; A_K]`` multiply to ``sum w_k B_k A_k``; the server merges that product into the base,
    ``D = sum w_k P_k``, and every client starts a fresh LoRA: ``B = 0``. The paper re-initialises ``A``
    randomly each round; we restart from the global ``A`` (the run's seeded initial draw, which FLoRA
    never changes), a choice that keeps the run deterministic and the state fixed-size. Exact, for any
    mix of ranks (the stacked rank is never materialised).
``lora-fair``  LoRA-FAIR (Bian et al., arXiv 2411.14961): FedAvg's ``B_bar``, ``A_bar``, then a server-side
    correction ``dB = argmin ||(B_bar + dB) A_bar - T||_F^2 + lam ||dB||_F^2`` with
    ``T = sum w_k B_k A_k``; ``B = B_bar + dB``, ``A = A_bar``, ``D = sum w_k D_k``. The paper solves a
    similarity-plus-regulariser objective iteratively; we take this ridge form in closed form,
    ``dB = (T - B_bar A_bar) A_bar^T (A_bar A_bar^T + lam I)^-1``, with
    ``lam = LORA_FAIR_LAMBDA * trace(A_bar A_bar^T) / r`` (a choice). Not exact, but never worse than
    FedAvg: ``||(B_bar+dB) A_bar - T||^2 <= ||B_bar A_bar - T||^2 - lam ||dB||^2``.
``hetlora``  HetLoRA's sparsity-weighted aggregation (Cho et al., arXiv 2401.06432): for a LoRA module
    ``w_k ∝ ||B_k A_k||_F`` over ``K(m)`` (sample weights when every norm is zero; the paper weighs whole
    clients, we weigh per module, a choice), zero-padded factors averaged with those weights (our states
    already hold lower ranks as zero components); head keys use sample weights. Not exact.
    Rank self-pruning is :func:`hetlora_prune_rank`, which the runtime applies to every group after each
    round under this rule (``runtime.rank_pruning``).

"Exact" means: for every module ``m`` some input holds, ``B @ A + D == sum_{k in K(m)} w_k P_k`` up to
rounding (float64 sums, see ``tests/runtime/test_aggregation_rules.py``). With mixed depths this holds per
layer among the inputs that trained that layer; modules no input holds keep their values and their base.
Two levels (devices into a group, groups into the global model) compose: a group's output delta is its
input at the cross-group step, so the global effective weight is the sample-weighted average of the
devices' effective weights for the three exact rules.

Numerics: products and sums in float64, cast back to the global value's dtype. Inputs are never modified.

Examples
--------
>>> import torch
>>> g = {"layers.0.q.lora_A": torch.ones(1, 2), "layers.0.q.lora_B": torch.zeros(2, 1)}
>>> a = {"layers.0.q.lora_A": torch.ones(1, 2), "layers.0.q.lora_B": torch.full((2, 1), 2.0)}
>>> b = {"layers.0.q.lora_A": torch.ones(1, 2), "layers.0.q.lora_B": torch.zeros(2, 1)}
>>> out = get_rule("flora").aggregate(g, [a, b], [1, 1])
>>> out.state["layers.0.q.lora_B"].abs().sum().item(), out.base_delta["layers.0.q"].tolist()
(0.0, [[1.0, 1.0], [1.0, 1.0]])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from hierfedlora.models.adapters import AdapterState, layer_of
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.runtime.aggregation import _check_merge, _check_weights

__all__ = [
    "LORA_FAIR_LAMBDA",
    "RULE_NAMES",
    "Aggregate",
    "AggregationRule",
    "BaseDelta",
    "NamedRule",
    "effective_products",
    "get_rule",
    "hetlora_prune_rank",
    "module_of",
]

BaseDelta = dict[str, torch.Tensor]
"""Per LoRA module (``layers.{l}.<module>``) a ``(out, in)`` tensor in the units of ``B @ A``."""

LORA_FAIR_LAMBDA = 1e-2
"""LoRA-FAIR's ridge penalty, relative to the mean eigenvalue of ``A_bar A_bar^T`` (our choice)."""


def module_of(key: str) -> str | None:
    """The module of a LoRA key (``layers.3.q.lora_A`` -> ``layers.3.q``); ``None`` for a head key."""
    if layer_of(key) is None:
        return None
    return key.rsplit(".", 1)[0]


@dataclasses.dataclass(frozen=True, slots=True)
class Aggregate:
    """A rule's output: the full adapter state and the base delta of every module some input held."""

    state: AdapterState
    base_delta: BaseDelta


@runtime_checkable
class AggregationRule(Protocol):
    """An aggregation rule (see the module docstring); ``runtime.engine`` uses it at both levels.

    ``trains_lora_a`` is ``False`` when devices must keep ``lora_A`` frozen (FFA-LoRA);
    ``changes_base`` is ``True`` when the rule writes base deltas (FedEx-LoRA, FLoRA);
    ``uploads_lora_a`` says whether ``lora_A`` travels (the cost formulas use it).
    """

    name: str
    trains_lora_a: bool
    changes_base: bool
    uploads_lora_a: bool

    def aggregate(
        self,
        global_state: AdapterState,
        states: Sequence[AdapterState],
        weights: Sequence[float],
        deltas: Sequence[Mapping[str, torch.Tensor]] | None = None,
    ) -> Aggregate: ...


def effective_products(state: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor] | None = None) -> BaseDelta:
    """``B @ A + D`` per module of ``state`` in float64 (the product-unit part of the effective weight)."""
    delta = delta or {}
    out: BaseDelta = {}
    for key in state:
        module = module_of(key)
        if module is not None and key.endswith("lora_A"):
            product = state[module + ".lora_B"].double() @ state[key].double()
            if module in delta:
                product = product + delta[module].double()
            out[module] = product
    return out


_Combine = Callable[
    [torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[float], str],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
]
"""(global A, the holders' As, Bs, deltas (float64), fractions, module) -> (A, B, delta or None), float64."""


def _wsum(tensors: Sequence[torch.Tensor], fractions: Sequence[float]) -> torch.Tensor:
    """``sum_i fractions[i] * tensors[i]`` in float64, in order: the same operations as
    ``runtime.aggregation.fedavg``, so the ``fedavg`` rule reproduces it bit for bit."""
    total = tensors[0].to(torch.float64) * fractions[0]
    for tensor, fraction in zip(tensors[1:], fractions[1:], strict=True):
        total.add_(tensor.to(torch.float64), alpha=fraction)
    return total


def _fedavg(g_a, a_list, b_list, d_list, w, module):  # type: ignore[no-untyped-def]
    return _wsum(a_list, w), _wsum(b_list, w), _wsum(d_list, w)


def _ffa(g_a, a_list, b_list, d_list, w, module):  # type: ignore[no-untyped-def]
    ref = g_a.double()
    for k, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
        differs = (a.double() != ref).any(dim=1)
        bad = differs & ((a.double() != 0).any(dim=1) | (b.double()[:, : a.shape[0]] != 0).any(dim=0))
        if bool(bad.any()):
            raise InvalidInputError(
                [Issue(f"states[{k}][{module + '.lora_A'!r}]", "the frozen global lora_A (FFA-LoRA)", "a trained A")]
            )
    return ref.clone(), _wsum(b_list, w), _wsum(d_list, w)


def _fedex(g_a, a_list, b_list, d_list, w, module):  # type: ignore[no-untyped-def]
    a_bar, b_bar = _wsum(a_list, w), _wsum(b_list, w)
    target = _wsum([b.double() @ a.double() + d for a, b, d in zip(a_list, b_list, d_list, strict=True)], w)
    return a_bar, b_bar, target - b_bar @ a_bar


def _flora(g_a, a_list, b_list, d_list, w, module):  # type: ignore[no-untyped-def]
    target = _wsum([b.double() @ a.double() + d for a, b, d in zip(a_list, b_list, d_list, strict=True)], w)
    return g_a.double().clone(), torch.zeros_like(b_list[0], dtype=torch.float64), target


def _lora_fair(g_a, a_list, b_list, d_list, w, module):  # type: ignore[no-untyped-def]
    a_bar, b_bar = _wsum(a_list, w), _wsum(b_list, w)
    target = _wsum([b.double() @ a.double() for a, b in zip(a_list, b_list, strict=True)], w)
    gram = a_bar @ a_bar.T
    rank = gram.shape[0]
    lam = LORA_FAIR_LAMBDA * float(torch.trace(gram)) / rank
    if lam <= 0:  # A_bar is zero: nothing to correct along
        return a_bar, b_bar, _wsum(d_list, w)
    correction = torch.linalg.solve(
        gram + lam * torch.eye(rank, dtype=torch.float64), a_bar @ (target - b_bar @ a_bar).T
    ).T
    return a_bar, b_bar + correction, _wsum(d_list, w)


def _sparsity_fractions(a_list: list[torch.Tensor], b_list: list[torch.Tensor], w: list[float]) -> list[float]:
    norms = [float(torch.linalg.matrix_norm(b.double() @ a.double())) for a, b in zip(a_list, b_list, strict=True)]
    total = math.fsum(norms)
    return [n / total for n in norms] if total > 0 and all(math.isfinite(n) for n in norms) else list(w)


def _hetlora(g_a, a_list, b_list, d_list, w, module):  # type: ignore[no-untyped-def]
    fractions = _sparsity_fractions(a_list, b_list, w)
    return _wsum(a_list, fractions), _wsum(b_list, fractions), _wsum(d_list, fractions)


@dataclasses.dataclass(frozen=True, slots=True)
class NamedRule:
    """An :class:`AggregationRule` from a per-module combine function (see the module docstring)."""

    name: str
    combine: _Combine = dataclasses.field(repr=False)
    trains_lora_a: bool = True
    changes_base: bool = False
    uploads_lora_a: bool = True

    def aggregate(
        self,
        global_state: AdapterState,
        states: Sequence[AdapterState],
        weights: Sequence[float],
        deltas: Sequence[Mapping[str, torch.Tensor]] | None = None,
    ) -> Aggregate:
        """Aggregate ``states`` (keys subsets of ``global_state``'s) with sample ``weights`` and input ``deltas``.

        Raises
        ------
        InvalidInputError
            No states; as ``runtime.aggregation.merge_across_groups``; a state holding one factor of a
            module without the other; a delta per state missing or of a module outside the global state;
            FFA-LoRA inputs whose ``lora_A`` was trained.
        """
        if not states:
            raise InvalidInputError([Issue("states", "a non-empty list of adapter states", list(states))])
        _check_merge(global_state, states, weights)
        deltas = [{} for _ in states] if deltas is None else list(deltas)
        issues = _check_weights([1.0] * len(deltas), len(states), "state") if len(deltas) != len(states) else []
        for idx, state in enumerate(states):
            for key in state:
                module = module_of(key)
                if module is not None:
                    other = module + (".lora_B" if key.endswith("lora_A") else ".lora_A")
                    if other not in state:
                        issues.append(Issue(f"states[{idx}]", "both LoRA factors of a module", f"no {other!r}"))
        for idx, delta in enumerate(deltas[: len(states)]):
            for module, value in delta.items():
                b_key = module + ".lora_B"
                if b_key not in global_state or module + ".lora_A" not in global_state:
                    issues.append(Issue(f"deltas[{idx}]", "modules of the global state", module))
                elif not isinstance(value, torch.Tensor) or tuple(value.shape) != (
                    global_state[b_key].shape[0],
                    global_state[module + ".lora_A"].shape[1],
                ):
                    issues.append(
                        Issue(f"deltas[{idx}][{module!r}]", "an (out, in) tensor", getattr(value, "shape", value))
                    )
        if issues:
            raise InvalidInputError(issues)
        total_of = {k: float(w) for k, w in enumerate(weights)}
        merged: AdapterState = {}
        base_delta: BaseDelta = {}
        for key, value in global_state.items():
            module = module_of(key)
            holders = [k for k, state in enumerate(states) if key in state]
            if not holders:
                merged[key] = value.clone()
                continue
            total = math.fsum(total_of[k] for k in holders)
            fractions = [total_of[k] / total for k in holders]
            if module is None:
                merged[key] = _wsum([states[k][key] for k in holders], fractions).to(value.dtype)
            elif key.endswith("lora_A"):
                b_key = module + ".lora_B"
                a_list = [states[k][key] for k in holders]
                b_list = [states[k][b_key] for k in holders]
                shape = (global_state[b_key].shape[0], value.shape[1])
                d_list = [
                    deltas[k][module].double() if module in deltas[k] else torch.zeros(shape, dtype=torch.float64)
                    for k in holders
                ]
                a_new, b_new, d_new = self.combine(value, a_list, b_list, d_list, fractions, module)
                merged[key] = a_new.to(value.dtype)
                merged[b_key] = b_new.to(global_state[b_key].dtype)
                if d_new is not None and (self.changes_base or any(module in deltas[k] for k in holders)):
                    base_delta[module] = d_new.to(value.dtype)
        return Aggregate({key: merged[key] for key in global_state}, base_delta)


_RULES: dict[str, NamedRule] = {
    "fedavg": NamedRule("fedavg", _fedavg),
    "ffa": NamedRule("ffa", _ffa, trains_lora_a=False, uploads_lora_a=False),
    "fedex": NamedRule("fedex", _fedex, changes_base=True),
    "flora": NamedRule("flora", _flora, changes_base=True),
    "lora-fair": NamedRule("lora-fair", _lora_fair),
    "hetlora": NamedRule("hetlora", _hetlora),
}
RULE_NAMES: tuple[str, ...] = tuple(_RULES)
"""The names :func:`get_rule` accepts."""


def get_rule(name: object) -> NamedRule:
    """The rule named ``name``.

    Raises
    ------
    InvalidInputError
        Field ``aggregation`` unless ``name`` is one of :data:`RULE_NAMES`.
    """
    if not isinstance(name, str) or name not in _RULES:
        raise InvalidInputError([Issue("aggregation", f"one of {', '.join(RULE_NAMES)}", name)])
    return _RULES[name]


def hetlora_prune_rank(state: Mapping[str, torch.Tensor], rank: int, *, gamma: float = 0.99, min_rank: int = 1) -> int:
    """HetLoRA's rank self-pruning (Cho et al., arXiv 2401.06432, Sec. 3.2): the rank a client keeps.

    The paper prunes a client's rank by a decay factor when the norm of its tail components falls
    below that of the rest; it leaves the exact test open. Our choice: drop the last component
    (``rank - 1``, never below ``min_rank``) when its contribution ``sum_m ||B_m[:, r-1] A_m[r-1]||_F``
    is below ``(1 - gamma)`` times that of all ``r`` components; otherwise keep ``rank``.

    Examples
    --------
    >>> s = {"layers.0.q.lora_A": torch.ones(2, 3), "layers.0.q.lora_B": torch.tensor([[1.0, 0.0]])}
    >>> hetlora_prune_rank(s, 2)
    1
    """
    if not (isinstance(rank, int) and rank >= 1):
        raise InvalidInputError([Issue("rank", "an integer >= 1", rank)])
    if rank <= min_rank:
        return rank
    tail = whole = 0.0
    for key, a in state.items():
        module = module_of(key)
        if module is None or not key.endswith("lora_A"):
            continue
        b = state[module + ".lora_B"].double()
        a64 = a.double()
        whole += float(torch.linalg.matrix_norm(b[:, :rank] @ a64[:rank]))
        tail += float(torch.linalg.matrix_norm(torch.outer(b[:, rank - 1], a64[rank - 1])))
    return rank - 1 if tail < (1.0 - gamma) * whole else rank
