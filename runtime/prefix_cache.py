"""The frozen-prefix cache: train the top ``d`` layers on hidden states computed once per sample.

Notation and the training semantics (S1)-(S4) are ``runtime.forward``'s: ``L`` layers, depth ``d``, boundary
``b = L - d``; the *front* runs before layer 0, the *frozen prefix* at ``b`` is the front plus layers ``0..b-1``,
in eval mode without a graph (S1), and :class:`~hierfedlora.runtime.forward.PlainForward` is the reference path.

So ``h_b(x)``, the input to layer ``b``, depends on sample ``x`` alone, never on adapters, step or RNG.
:class:`PrefixCache` computes it once per (sample, ``b``) and trains from it, exactly:

(E1) Same values: ``h_b`` is computed by the model's own code in eval mode under ``no_grad``, stopped by
     a pre-hook on layer ``b`` that captures its hidden-state argument. Only the last bits may differ,
     when the plain batch and the cache's chunk differ in size (~1e-6 relative; see (E5)). With
     ``dtype=float16``/``bfloat16`` states are rounded (relative ~5e-4 / ~4e-3) and cast back when used.
(E2) Same code above ``b``: the cached forward runs the whole model on the batch's real ``input_ids``
     and ``attention_mask``, so the model builds its masks, position ids and pad positions itself;
     layers ``0..b-1`` are swapped for pass-through modules (a transformers 5 layer returns its
     hidden-state tensor, and so do they) and a pre-hook on layer ``b`` substitutes the cached rows.
     The front still runs (a lookup and a norm: cheap).
(E3) Same RNG use: the prefix draws nothing in either path (eval mode), nor does computing states, and
     layers ``b..L-1`` and the head run the same code in the same order: same seed, same dropout masks.
(E4) Same gradients: layer ``b``'s input carries no graph in either path.
(E5) Same bits whatever the history: a CPU row's result can change in its last bits with the batch
     shape (BLAS picks kernels by size), so states are always computed ``chunk_size`` rows at a time,
     the last chunk padded by repeating a sample. The cache then holds the same bits whatever was asked
     for first, and a resumed run trains exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from hierfedlora.models.catalog import find_layers
from hierfedlora.models.lora import AdaptedModel, check_depth
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.rules import POSITIVE_INT, is_int
from hierfedlora.runtime.data import TokenizedData
from hierfedlora.runtime.forward import Forward, Modes, PlainForward, StopForwardError, eval_width_probe, select_batch

__all__ = ["Forward", "PlainForward", "PrefixCache"]  # Forward and PlainForward: runtime.forward's, as before

log = logging.getLogger(__name__)

_CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _PassThrough(nn.Module):
    """Stands in for a frozen layer: returns its hidden-state input, as a transformers 5 layer returns its output."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@dataclasses.dataclass(slots=True)
class _Boundary:
    """Cached states entering one layer: sample ``s`` is row ``row_of[s]`` of ``chunks[chunk_of[s]]`` (-1: none).

    ``num_bytes`` is kept up to date as chunks come and go. A *turn* is a run of consecutive requests at
    one boundary (a task's steps, an evaluation); ``last_use`` is the cache's request count at this
    boundary's latest request, ``previous_turn`` its ``last_use`` when its previous turn ended (-1: none).
    """

    chunk_of: torch.Tensor
    row_of: torch.Tensor
    chunks: list[torch.Tensor] = dataclasses.field(default_factory=list)
    num_bytes: int = 0
    last_use: int = -1
    previous_turn: int = -1

    def add(self, samples: torch.Tensor, states: torch.Tensor) -> None:
        self.chunk_of[samples] = len(self.chunks)
        self.row_of[samples] = torch.arange(samples.numel())
        self.chunks.append(states)
        self.num_bytes += states.numel() * states.element_size()

    def drop_last(self) -> None:
        """Forget the newest chunk (the oldest stay: what is kept is stable, not churned)."""
        chunk = self.chunks.pop()
        self.chunk_of[self.chunk_of == len(self.chunks)] = -1
        self.num_bytes -= chunk.numel() * chunk.element_size()


class PrefixCache:
    """Hidden states entering layer ``L - d``, computed once per sample and boundary; forwards that use them.

    Parameters
    ----------
    model : AdaptedModel
        The run's one model; its frozen base never changes, so cached states stay valid.
    data : TokenizedData
        Samples are picked from it by index; states are cached per row.
    dtype : torch.dtype
        Storage dtype: ``float32`` (exact to rounding), ``float16`` or ``bfloat16`` (half the memory;
        losses and gradients then agree to about 1e-2, see (E1)).
    max_bytes : int or None
        Bound on :attr:`cached_bytes` (``None``: none); see :meth:`_make_room` for what a full cache
        keeps. A chunk that does not fit serves its batch and is dropped (exact, slower).
    chunk_size : int
        Samples per forward when computing missing states.

    Raises
    ------
    InvalidInputError
        Fields ``dtype``, ``max_bytes`` (``None`` or an integer >= 0) and ``chunk_size`` (an integer >= 1),
        all reported at once.
    """

    def __init__(
        self,
        model: AdaptedModel,
        data: TokenizedData,
        *,
        dtype: torch.dtype = torch.float32,
        max_bytes: int | None = None,
        chunk_size: int = 16,
    ) -> None:
        issues = []
        if dtype not in _CACHE_DTYPES:
            issues.append(Issue("dtype", "torch.float32, torch.float16 or torch.bfloat16", dtype))
        if not (max_bytes is None or (is_int(max_bytes) and max_bytes >= 0)):  # type: ignore[operator]
            issues.append(Issue("max_bytes", "None or an integer >= 0", max_bytes))
        if not POSITIVE_INT.accepts(chunk_size):
            issues.append(Issue("chunk_size", POSITIVE_INT.expected, chunk_size))
        if issues:
            raise InvalidInputError(issues)
        self._model, self._data, self._layers = model, data, find_layers(model)[1]
        self._dtype, self._max_bytes, self._chunk_size = dtype, max_bytes, chunk_size
        self._modes = Modes(model, data)
        self._eval_width = eval_width_probe(model, data, self._modes)
        self._boundaries: dict[int, _Boundary] = {}  # least recently used first
        self._uses = 0  # requests so far (_store counts them)
        self._hidden_dtype, self._hidden_shape = torch.float32, torch.Size()

    @property
    def cached_bytes(self) -> int:
        """Bytes of the ``[rows, seq_len, hidden]`` state chunks held (not the 16-byte-a-sample index)."""
        return sum(boundary.num_bytes for boundary in self._boundaries.values())

    @property
    def cached_bytes_by_depth(self) -> dict[int, int]:
        """:attr:`cached_bytes` by depth (``L - boundary``), for boundaries that hold any."""
        num_layers = self._model.num_layers
        return {num_layers - b: store.num_bytes for b, store in sorted(self._boundaries.items()) if store.num_bytes}

    def forward_for(self, depth: int) -> Forward:
        """The cached forward at ``depth``; each call requires ``model.depth == depth``.

        Raises
        ------
        InvalidInputError
            Field ``depth`` outside ``1..model.max_depth``.
        """
        check_depth(depth, self._model.max_depth)
        return _CachedForward(self, depth)

    def warm(self, depth: int, indices: torch.Tensor) -> int:
        """Compute and keep the states of samples ``indices`` at ``depth``; return how many were missing.

        Raises
        ------
        InvalidInputError
            As :meth:`forward_for`; field ``depth`` when the model's active depth differs.
        """
        boundary = self._boundary(depth)
        with torch.inference_mode(False):
            missing = self._missing(boundary, indices)
            self._compute(boundary, missing)
        return int(missing.numel())

    def _boundary(self, depth: int) -> int:
        """``L - depth``, once ``depth`` is checked to be the model's active depth."""
        check_depth(depth, self._model.max_depth)
        if self._model.depth != depth:
            expected = f"the model's active depth {self._model.depth} (call model.set_depth({depth}) first)"
            raise InvalidInputError([Issue("depth", expected, depth)])
        return self._model.num_layers - depth

    def _store(self, boundary: int) -> _Boundary:
        """The boundary's store, created if need be and moved to the end (most recently used)."""
        store = self._boundaries.pop(boundary, None)
        if store is None:
            empty = torch.full((self._data.num_samples,), -1, dtype=torch.int64)
            store = _Boundary(chunk_of=empty, row_of=empty.clone())
        self._boundaries[boundary] = store
        self._uses += 1
        if store.last_use != self._uses - 1:  # another boundary was asked for since: a new turn
            store.previous_turn = store.last_use
        store.last_use = self._uses
        return store

    def _missing(self, boundary: int, indices: torch.Tensor) -> torch.Tensor:
        """Sorted distinct samples of ``indices`` with no cached state at ``boundary``."""
        store = self._store(boundary)
        return torch.unique(indices[store.chunk_of[indices] < 0])

    def _compute(self, boundary: int, samples: torch.Tensor) -> dict[int, torch.Tensor]:
        """(E1) States of ``samples`` at ``boundary`` in chunks; kept if they fit, else returned by sample."""
        unkept: dict[int, torch.Tensor] = {}
        for start in range(0, samples.numel(), self._chunk_size):
            chunk_samples = samples[start : start + self._chunk_size]
            states = self._prefix_states(boundary, chunk_samples)
            if self._make_room(boundary, states.numel() * states.element_size()):
                self._boundaries[boundary].add(chunk_samples, states)
            else:
                unkept.update(zip(chunk_samples.tolist(), states, strict=True))
        return unkept

    def _prefix_states(self, boundary: int, samples: torch.Tensor) -> torch.Tensor:
        """Run the model up to layer ``boundary`` (eval, no graph) and return its hidden-state input.

        Always on ``chunk_size`` rows, ``samples`` padded by repeating the last: (E5).
        """
        captured: list[torch.Tensor] = []
        padded = torch.cat([samples, samples[-1:].expand(self._chunk_size - samples.numel())])

        def capture(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise StopForwardError

        handle = self._layers[boundary].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with self._modes(train=False), torch.no_grad(), contextlib.suppress(StopForwardError):
                self._model(**select_batch(self._data, padded, labels=False))
        finally:
            handle.remove()
        # the model's dtype and a sample's shape: cached states are cast back to them when used
        self._hidden_dtype, self._hidden_shape = captured[0].dtype, captured[0].shape[1:]
        return captured[0][: samples.numel()].to(self._dtype, copy=True)

    def _make_room(self, boundary: int, num_bytes: int) -> bool:
        """Whether ``num_bytes`` more states at ``boundary`` may be kept under ``max_bytes``, making room if fair.

        A full cache keeps a stable set of rows instead of trading them back and forth:

        1. boundaries not requested since ``boundary``'s previous turn (a depth no longer in use, e.g.
           after a re-plan) are evicted whole, least recently used first;
        2. then the boundary holding the most bytes gives up its newest chunks, but only while it holds
           more than ``boundary`` would after taking them: boundaries in use converge to equal shares;
        3. otherwise the chunk is not kept (its rows are recomputed whenever used; exact, slower).

        Groups at two depths train in turns (a level of one, then of the other); evicting the other
        boundary whole for room (plain LRU) made every turn recompute every row it touched.
        """
        if self._max_bytes is None:
            return True
        store = self._boundaries[boundary]
        total = self.cached_bytes
        if total + num_bytes <= self._max_bytes:
            return True
        stale = [b for b, other in self._boundaries.items() if b != boundary and other.last_use < store.previous_turn]
        for other in stale:
            log.info("prefix cache: evicting boundary %d (%d bytes)", other, self._boundaries[other].num_bytes)
            total -= self._boundaries.pop(other).num_bytes
            if total + num_bytes <= self._max_bytes:
                return True
        while total + num_bytes > self._max_bytes:
            richest = max(self._boundaries.values(), key=lambda s: s.num_bytes)
            if richest is store or not richest.chunks or richest.num_bytes <= store.num_bytes + num_bytes:
                return False
            size = richest.chunks[-1].numel() * richest.chunks[-1].element_size()
            richest.drop_last()
            total -= size
        return True

    def _states(self, boundary: int, indices: torch.Tensor) -> torch.Tensor:
        """``[batch, seq_len, hidden]`` states of ``indices`` in the model's dtype, missing ones computed first."""
        unkept = self._compute(boundary, self._missing(boundary, indices))
        store = self._boundaries[boundary]
        chunk_of = store.chunk_of[indices]
        states = torch.empty((indices.numel(), *self._hidden_shape), dtype=self._hidden_dtype)
        for chunk in torch.unique(chunk_of).tolist():
            rows = (chunk_of == chunk).nonzero().squeeze(1)
            if chunk >= 0:
                states[rows] = store.chunks[chunk][store.row_of[indices[rows]]].to(states.dtype)
            else:
                states[rows] = torch.stack([unkept[s] for s in indices[rows].tolist()]).to(states.dtype)
        return states

    @contextlib.contextmanager
    def _from_states(self, boundary: int, states: torch.Tensor) -> Iterator[None]:
        """(E2) Layers below ``boundary`` pass through; layer ``boundary`` receives ``states``."""

        def substitute(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            assert (args[0] if args else kwargs["hidden_states"]).shape == states.shape, "states match the batch"
            if args:
                return (states, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": states}

        originals = list(self._layers[:boundary])
        passthrough = _PassThrough()
        handle = self._layers[boundary].register_forward_pre_hook(substitute, with_kwargs=True)
        try:
            for index in range(boundary):
                self._layers[index] = passthrough
            yield
        finally:
            for index, layer in enumerate(originals):
                self._layers[index] = layer
            handle.remove()

    def _run(self, depth: int, indices: torch.Tensor, *, train: bool, labels: bool | None = None) -> Any:
        boundary = self._boundary(depth)
        with torch.inference_mode(False):  # kept states and indexes must be usable by training later
            states = self._states(boundary, indices)
        width = None if train else self._eval_width(indices)  # (S4): evaluation only
        if width is not None:
            states = states[:, :width].contiguous()
        # layers below the boundary are swapped out; their flags are set as in the plain path all the same
        with self._from_states(boundary, states), self._modes(train=train, boundary=boundary):
            return self._model(
                **select_batch(self._data, indices, labels=train if labels is None else labels, width=width)
            )


@dataclasses.dataclass(frozen=True, slots=True)
class _CachedForward:
    """:class:`Forward` at one depth over a :class:`PrefixCache`."""

    cache: PrefixCache
    depth: int

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of samples ``indices`` from cached states (S1, S2)."""
        return self.cache._run(self.depth, indices, train=True).loss  # type: ignore[no-any-return]

    def train_logits(self, indices: torch.Tensor) -> torch.Tensor:
        """``[batch, num_labels]`` logits of samples ``indices`` from cached states, in the modes of ``loss``."""
        return self.cache._run(self.depth, indices, train=True, labels=False).logits  # type: ignore[no-any-return]

    def logits(self, indices: torch.Tensor) -> torch.Tensor:
        """``[batch, num_labels]`` logits of samples ``indices`` from cached states, eval mode."""
        return self.cache._run(self.depth, indices, train=False).logits  # type: ignore[no-any-return]
