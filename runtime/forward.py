"""The forward the runtime trains and evaluates with, and its semantics (S1)-(S4); :class:`PlainForward` is the
reference path that ``runtime.prefix_cache.PrefixCache`` reproduces exactly from cached states.

Notation: ``L`` layers, depth ``d``, boundary ``b = L - d`` (the lowest layer with live LoRA). The *front*
is every module called before layer 0 (BERT's ``embeddings``; GPT-2's ``wte``, ``wpe``, ``drop``; LLaMA's
``embed_tokens``, ``rotary_emb``), found once by watching a forward; the *frozen prefix* at ``b`` is the
front plus layers ``0..b-1``. The training semantics of the whole runtime, defined by :class:`PlainForward`:

(S1) The frozen prefix runs in **eval mode** (no dropout) and records no graph: LoRA below ``b`` is
     disabled by :meth:`~hierfedlora.models.lora.AdaptedModel.set_depth` and the base model is frozen.
(S2) Layers ``b..L-1`` and all after them (pooler, head, its dropout) run in **train mode** in
     :meth:`Forward.loss`; :meth:`Forward.logits` runs the whole model in eval mode.
(S3) Module modes are restored when a call returns: a call changes no state but the RNG (dropout).
(S4) :meth:`Forward.logits` (evaluation) drops the batch's trailing padding columns where the model
     ignores them (``runtime.padding``): the same logits to rounding, from about half the tokens on
     WordNet. Training keeps every column (its dropout masks are drawn over the padded shape).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from hierfedlora.models.catalog import find_layers
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.runtime.data import TokenizedData
from hierfedlora.runtime.padding import EvalWidth

__all__ = ["Forward", "Modes", "PlainForward", "StopForwardError", "eval_width_probe", "select_batch"]


class Forward(Protocol):
    """A model forward over samples of one data set, picked by index, at one depth."""

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch, differentiable w.r.t. the active adapters (S1, S2)."""
        ...

    def logits(self, indices: torch.Tensor) -> torch.Tensor:
        """``[batch, num_labels]`` logits, the whole model in eval mode."""
        ...

    def train_logits(self, indices: torch.Tensor) -> torch.Tensor:
        """``[batch, num_labels]`` logits with the modes of :meth:`loss` (S1, S2), differentiable; no loss."""
        ...


class StopForwardError(Exception):
    """Raised by a hook to end a forward once the tensor it needs is captured."""


def select_batch(
    data: TokenizedData, indices: torch.Tensor, *, labels: bool, width: int | None = None
) -> dict[str, torch.Tensor]:
    """The rows ``indices``; with ``width``, only their first ``width`` columns (``runtime.padding``)."""
    if width is None:
        batch = {"input_ids": data.input_ids[indices], "attention_mask": data.attention_mask[indices]}
    else:
        batch = {"input_ids": data.input_ids[indices, :width], "attention_mask": data.attention_mask[indices, :width]}
    return {**batch, "labels": data.labels[indices]} if labels else batch


def eval_width_probe(model: AdaptedModel, data: TokenizedData, modes: Modes) -> EvalWidth:
    """(S4) The columns an evaluation batch of ``data`` needs on ``model``, probed with the plain forward."""

    def logits_of(rows: torch.Tensor, width: int | None) -> torch.Tensor:
        with modes(train=False):
            logits: torch.Tensor = model(**select_batch(data, rows, labels=False, width=width)).logits
        return logits

    return EvalWidth(data.attention_mask, logits_of)


def _front_modules(model: AdaptedModel, data: TokenizedData, modes: Modes) -> tuple[nn.Module, ...]:
    """The outermost modules called before layer 0 that do not contain it (the front), found on one sample."""
    layers_name, layers = find_layers(model)
    first = f"{layers_name}.0"
    ancestors = {first.rsplit(".", k)[0] for k in range(1, first.count(".") + 1)} | {""}
    called: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _m, _a, name=name: called.append(name))
        for name, module in model.named_modules()
    ]

    def stop(_module: nn.Module, _args: Any, _kwargs: Any, output: Any) -> None:
        assert isinstance(output, torch.Tensor), "transformers 5 layers return their hidden-state tensor"
        raise StopForwardError

    handles.append(layers[0].register_forward_hook(stop, with_kwargs=True))
    try:
        with modes(train=False), torch.no_grad(), contextlib.suppress(StopForwardError):
            model(**select_batch(data, torch.arange(1), labels=False))
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    front = [n for n in dict.fromkeys(called[: called.index(first)]) if n not in ancestors]
    return tuple(modules[n] for n in front if n.rpartition(".")[0] in ancestors)


class Modes:
    """(S1)-(S3) as a context. Modules are listed once (``AdaptedModel`` fixes the tree) and only flags that
    differ are flipped: ``model.train()`` and a restore cost ~1 ms a step, 2-3% of a cached depth-1 step."""

    def __init__(self, model: AdaptedModel, data: TokenizedData) -> None:
        self._modules = tuple(model.modules())
        self._layers = find_layers(model)[1]
        self._wanted: dict[tuple[bool, int], tuple[bool, ...]] = {}
        self.front: tuple[nn.Module, ...] = ()
        self.front = _front_modules(model, data, self)

    def _flags(self, train: bool, boundary: int) -> tuple[bool, ...]:
        key = (train, boundary if train else 0)
        if key not in self._wanted:
            frozen = [*self.front, *self._layers[:boundary]] if train else []
            in_prefix = {id(m) for part in frozen for m in part.modules()}
            self._wanted[key] = tuple(train and id(m) not in in_prefix for m in self._modules)
        return self._wanted[key]

    @contextlib.contextmanager
    def __call__(self, *, train: bool, boundary: int = 0) -> Iterator[None]:
        """Train mode (the front and layers below ``boundary`` in eval) or eval mode; modes restored after."""
        wanted = self._flags(train, boundary)
        saved = tuple(m.training for m in self._modules)
        self._set(wanted, saved)
        try:
            yield
        finally:
            self._set(saved, wanted)

    def _set(self, flags: tuple[bool, ...], current: tuple[bool, ...]) -> None:
        for module, flag, now in zip(self._modules, flags, current, strict=True):
            if flag is not now:
                module.training = flag


class PlainForward:
    """The uncached reference path: the whole model on each batch, with the mode split (S1)-(S3).

    Parameters
    ----------
    model : AdaptedModel
        Its active depth (``model.depth``, read at each call) sets the boundary ``b``.
    data : TokenizedData
        Samples are picked from it by index.
    """

    def __init__(self, model: AdaptedModel, data: TokenizedData) -> None:
        self._model = model
        self._data = data
        self._modes = Modes(model, data)
        self._eval_width = eval_width_probe(model, data, self._modes)

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of samples ``indices``; the prefix in eval mode, the rest in train mode."""
        with self._modes(train=True, boundary=self._model.num_layers - self._model.depth):
            loss: torch.Tensor = self._model(**select_batch(self._data, indices, labels=True)).loss
        return loss

    def train_logits(self, indices: torch.Tensor) -> torch.Tensor:
        """``[batch, num_labels]`` logits of samples ``indices`` in the modes of :meth:`loss`."""
        with self._modes(train=True, boundary=self._model.num_layers - self._model.depth):
            logits: torch.Tensor = self._model(**select_batch(self._data, indices, labels=False)).logits
        return logits

    def logits(self, indices: torch.Tensor) -> torch.Tensor:
        """``[batch, num_labels]`` logits of samples ``indices``, the whole model in eval mode (S4)."""
        width = self._eval_width(indices)
        with self._modes(train=False):
            logits: torch.Tensor = self._model(**select_batch(self._data, indices, labels=False, width=width)).logits
        return logits
