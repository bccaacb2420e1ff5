"""Token packing: the frozen linear layers of a batched training step compute the real tokens only.

Training keeps every column of a batch (``runtime.padding``: its dropout masks are drawn over the padded
shape), so a WordNet batch at seq 24 is about a third padding, and the frozen ``nn.Linear`` layers (the
attention projections and the feed-forward, nearly all of a step's multiply-adds) used to compute every
padding position too. While :func:`packed_linears` is open, each frozen ``nn.Linear`` of the trained layers
gathers the step's real tokens (``attention_mask == 1``), computes them, and scatters its output back into
the padded shape with zeros at the padding positions. Nothing else changes: the LoRA factors, dropout,
norms, attention and the head still see the padded shape. Why the real tokens' values are the same:

(K1) **Rows are independent.** A linear layer's output row is its input row times the weight; computing
     fewer rows gives the same rows. With a BLAS whose row results do not depend on how many rows a call
     has, the bits are the same too (this project's host: MKL on AMD EPYC, checked for 33 to 2,304 rows and
     1 and 2 threads); a BLAS that picks kernels by size rounds the last bits otherwise (~1e-7 relative).
(K2) **Padding never reaches a real token.** Attention gives padding keys a weight of exactly zero (the
     additive mask underflows ``exp``), norms and activations work per position, and the head reads real
     positions (BERT's first token, GPT-2's and LLaMA's last real one): the values left at padding positions
     (zeros now, the linear of padding before) change no real token. :func:`packing_is_exact` checks it once
     per model on the rows with the most padding, packed against unpacked; where they differ, nothing packs.
(K3) **The gradients are the same.** No loss reads a padding position, so their gradients are exactly zero
     in both paths; the frozen weights need no gradient of their own, and the LoRA factors (which still run
     on the padded shape) sum the same products with the same zeros in the same order.

(K4) **A feed-forward stays packed.** A BERT-style intermediate block (``act(dense(x))``) computes its
     activation on the real tokens too and remembers the packed rows of the padded tensor it returns; the
     next linear layer given that very tensor takes those rows instead of gathering them again. The padded
     tensor then feeds nothing, and the gradient reaches the packed rows from that one layer, as before.

So a run packs or not to the same results (bit for bit where (K1) holds), and a resume may change it
(``RunOptions.pack_tokens``). The trained layers only: the frozen prefix runs in eval mode without a graph
(and is cached), and evaluation already drops trailing padding columns. GPT-2's ``Conv1D`` layers are not
``nn.Linear`` and are left as they are.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from hierfedlora.models.catalog import find_layers
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.runtime.data import TokenizedData

__all__ = ["PROBE_ROWS", "StepTokens", "packed_linears", "packing_is_exact"]

log = logging.getLogger(__name__)

F = torch.nn.functional

PROBE_ROWS = 4


class StepTokens:
    """The real tokens of the step being computed: flat positions in its ``[rows, width]`` batch (or none).

    A :func:`packed_linears` context reads it at every call, so a training loop sets it once per step
    (:meth:`set`) and clears it after (:meth:`clear`); while it is clear, every layer computes every column.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.width = 0
        self.positions: torch.Tensor | None = None
        self._packed_of: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}

    def set(self, attention_mask: torch.Tensor) -> None:
        """The step's ``[rows, width]`` attention mask: its nonzero entries are the real tokens."""
        self.rows, self.width = int(attention_mask.shape[0]), int(attention_mask.shape[1])
        self.positions = attention_mask.reshape(-1).nonzero().squeeze(1)
        self._packed_of.clear()

    def clear(self) -> None:
        self.rows, self.width, self.positions = 0, 0, None
        self._packed_of.clear()

    def remember(self, full: torch.Tensor, packed: torch.Tensor) -> None:
        """``full`` (padded shape) was scattered from ``packed`` (real tokens) during this step (K4)."""
        self._packed_of[id(full)] = (weakref.ref(full), packed)  # weak: a padded tensor nobody reads is freed

    def packed_form(self, x: torch.Tensor) -> torch.Tensor | None:
        """The real-token rows ``x`` was scattered from this step, if it was (K4)."""
        known = self._packed_of.get(id(x))
        return known[1] if known is not None and known[0]() is x else None

    def applies_to(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is a ``[rows, width, features]`` activation of this step with padding to skip."""
        return (
            self.positions is not None
            and x.dim() == 3
            and x.shape[0] == self.rows
            and x.shape[1] == self.width
            and self.positions.numel() < self.rows * self.width
        )


def _gather(tokens: StepTokens, x: torch.Tensor) -> torch.Tensor:
    """The real-token rows of ``x`` (``[real tokens, features]``)."""
    known = tokens.packed_form(x)
    if known is not None:
        return known
    assert tokens.positions is not None
    return x.reshape(-1, x.shape[-1]).index_select(0, tokens.positions)


def _scatter(tokens: StepTokens, packed: torch.Tensor) -> torch.Tensor:
    """``packed`` rows back in the step's ``[rows, width, features]`` shape, zeros at the padding positions."""
    assert tokens.positions is not None
    full = packed.new_zeros(tokens.rows * tokens.width, packed.shape[1]).index_copy_(0, tokens.positions, packed)
    return full.reshape(tokens.rows, tokens.width, packed.shape[1])


def _packed_linear(tokens: StepTokens, module: nn.Linear, x: torch.Tensor) -> Any:
    """``module(x)`` on the step's real tokens only; zeros at the padding positions (K1)."""
    if not tokens.applies_to(x):
        return F.linear(x, module.weight, module.bias)
    return _scatter(tokens, F.linear(_gather(tokens, x), module.weight, module.bias))


def _packed_intermediate(tokens: StepTokens, module: nn.Module, x: torch.Tensor) -> Any:
    """A BERT-style ``act(dense(x))`` block on the real tokens; its packed output is remembered (K4)."""
    dense: nn.Linear = module.dense  # type: ignore[assignment]
    act: Callable[[torch.Tensor], torch.Tensor] = module.intermediate_act_fn  # type: ignore[assignment]
    if not tokens.applies_to(x):
        return act(F.linear(x, dense.weight, dense.bias))
    packed = act(F.linear(_gather(tokens, x), dense.weight, dense.bias))
    full = _scatter(tokens, packed)
    tokens.remember(full, packed)
    return full


def _is_intermediate(module: nn.Module, trainable: set[int]) -> bool:
    """A BERT-style feed-forward input block: ``act(dense(x))`` with a frozen ``dense`` (``BertIntermediate``)."""
    dense = getattr(module, "dense", None)
    return (
        type(module).__name__.endswith("Intermediate")
        and type(dense) is nn.Linear
        and id(dense.weight) not in trainable
        and callable(getattr(module, "intermediate_act_fn", None))
    )


def _packed_modules(model: AdaptedModel, first_layer: int) -> list[tuple[nn.Module, Callable[..., Any]]]:
    """Layers ``first_layer..L-1``'s frozen ``nn.Linear`` modules and BERT-style intermediate blocks, each
    with the packed function that computes it (an intermediate block's own ``dense`` is computed by it)."""
    trainable = {id(p) for p in model.trainable_parameters().values()}
    found: list[tuple[nn.Module, Callable[..., Any]]] = []
    inside: set[int] = set()
    for layer in list(find_layers(model)[1])[first_layer:]:
        for module in layer.modules():
            if _is_intermediate(module, trainable):
                found.append((module, _packed_intermediate))
                inside.add(id(module.dense))
    for layer in list(find_layers(model)[1])[first_layer:]:
        for module in layer.modules():
            if type(module) is nn.Linear and id(module.weight) not in trainable and id(module) not in inside:
                found.append((module, _packed_linear))
    return found


@contextlib.contextmanager
def packed_linears(model: AdaptedModel, tokens: StepTokens, *, first_layer: int | None = None) -> Iterator[None]:
    """While open, the frozen ``nn.Linear`` layers from ``first_layer`` (default: the lowest trained layer,
    ``L - depth``) compute only ``tokens``' real tokens of the activations they are given."""
    start = model.num_layers - model.depth if first_layer is None else first_layer
    modules = _packed_modules(model, start)
    try:
        for module, packed in modules:
            module.forward = _bound(tokens, module, packed)  # type: ignore[method-assign]
        yield
    finally:
        for module, _ in modules:
            del module.forward


def _bound(
    tokens: StepTokens, module: nn.Module, packed: Callable[[StepTokens, Any, torch.Tensor], Any]
) -> Callable[[torch.Tensor], Any]:
    return lambda x: packed(tokens, module, x)


def packing_is_exact(model: AdaptedModel, data: TokenizedData) -> bool:
    """(K2) Whether packing every layer leaves the eval-mode logits of the most padded rows unchanged.

    Compared to ``rtol 1e-4, atol 1e-5 * max |logit|`` (only rounding may differ, (K1)); a model whose
    real tokens or head read padding positions differs far more. True when no probed row has padding.
    """
    lengths = data.attention_mask.sum(dim=1)
    rows = torch.argsort(lengths, stable=True)[:PROBE_ROWS]
    mask = data.attention_mask[rows]
    if bool(mask.all()):
        return True
    batch = {"input_ids": data.input_ids[rows], "attention_mask": mask}
    tokens = StepTokens()
    saved = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            full = model(**batch).logits
            tokens.set(mask)
            with packed_linears(model, tokens, first_layer=0):
                packed = model(**batch).logits
    finally:
        for module, training in saved:
            module.training = training
    scale = max(1.0, float(full.abs().max()))
    exact = bool(torch.allclose(packed, full, rtol=1e-4, atol=1e-5 * scale))
    log.debug("token packing leaves the logits unchanged: %s", exact)
    return exact
