"""Per-device dropout for batched training: the masks torch draws, at less cost.

Batched device training (``runtime.batched_training``, (B5)) draws each device's dropout masks from that
device's own random state, on its own rows, so that a device trained in a batch gets the masks it would
get trained alone. On a CPU, torch draws a dropout mask with ``bernoulli_``, which runs one element after
another (Mersenne Twister, two 32-bit words an element), and batched attention with dropout ran torch's kernel
once per device. This module draws the same masks for less:

(D1) **Uniform draws.** Where torch's ``bernoulli_(q)`` is its generic kernel, an element is ``u < q`` for
     ``u`` the generator's next uniform double; ``uniform_`` on a ``float64`` tensor draws those very ``u``
     (same words, same order) at less cost an element. :func:`uniform_draws_match_bernoulli` checks once a
     process, on several sizes, probabilities and seeds, that the masks *and* the generator's state after
     them are equal bit for bit; where they are not (torch draws with MKL's vector generator on an Intel
     CPU), every mask is drawn with ``bernoulli_`` as before.
(D2) **Attention dropout in one call.** With attention dropout, torch's scaled-dot-product attention on a CPU
     runs its composite ("math") kernel: scale ``q`` and ``k`` by ``sqrt(scale)``, ``q @ k^T``, add the mask
     (a boolean one as ``0`` / ``-inf``), ``_safe_softmax``, ``dropout``, ``@ v``. Every step works within
     a row, so :func:`attention_with_dropout` computes every device's rows in one call, with each device's
     mask drawn as in (D1). :func:`replica_admits` checks each kind of call once (mask kind, shapes,
     scale) against torch's own kernel on one device's rows, bit for bit, outputs and generator state;
     a kind that differs runs per device through torch's kernel, as before.

So the masks, the activations and the generator states are the same bits as one ``bernoulli_`` per device;
only the time differs. (Drawing devices in parallel threads gained nothing on a 2-core host: torch's OpenMP
workers spin on the other core between operators.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "AttentionCall",
    "DeviceRows",
    "attention_with_dropout",
    "draw_keep_masks",
    "replica_admits",
    "uniform_draws_match_bernoulli",
]

F = torch.nn.functional

_matches: dict[torch.dtype, bool] = {}
_admitted: dict[tuple[Any, ...], bool] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRows:
    """Rows ``start : start + count`` (dim 0) of a step belong to the device drawing from ``generator``."""

    start: int
    count: int
    generator: torch.Generator


def uniform_draws_match_bernoulli(dtype: torch.dtype = torch.float32) -> bool:
    """(D1) Whether ``uniform_`` in ``float64`` then ``< q`` gives ``bernoulli_(q)``'s masks in ``dtype`` and leaves
    the generator where ``bernoulli_`` leaves it, on this host's torch (checked once a process per dtype)."""
    if dtype not in _matches:
        _matches[dtype] = all(
            _draws_agree(dtype, size, q, seed)
            for size in (1, 7, 1_000, 70_001)
            for q in (0.9, 0.5, 1e-4, 1 / 3)
            for seed in (0, 1)
        )
    return _matches[dtype]


def _draws_agree(dtype: torch.dtype, size: int, q: float, seed: int) -> bool:
    reference = torch.Generator().manual_seed(seed)
    expected = torch.empty(size, dtype=dtype).bernoulli_(q, generator=reference)
    candidate = torch.Generator().manual_seed(seed)
    got = (torch.empty(size, dtype=torch.float64).uniform_(generator=candidate) < q).to(dtype)
    return torch.equal(expected, got) and torch.equal(reference.get_state(), candidate.get_state())


def draw_keep_masks(rows: Sequence[DeviceRows], shape: Sequence[int], keep: float, dtype: torch.dtype) -> torch.Tensor:
    """Dropout noise ``bernoulli(keep) / keep`` of ``shape`` (dim 0: every device's rows), device by device from
    its generator: the bits ``torch.empty(...).bernoulli_(keep, generator=g).div_(keep)`` gives per device."""
    if not uniform_draws_match_bernoulli(dtype):
        noise = torch.empty(tuple(shape), dtype=dtype)
        _draw_each(rows, lambda part, g: part.bernoulli_(keep, generator=g), noise)
        return noise.div_(keep)
    uniforms = torch.empty(tuple(shape), dtype=torch.float64)
    _draw_each(rows, lambda part, g: part.uniform_(generator=g), uniforms)
    return (uniforms < keep).to(dtype).div_(keep)


def _draw_each(rows: Sequence[DeviceRows], draw: Any, out: torch.Tensor) -> None:
    """``draw(out rows of a device, its generator)`` for every device, in order."""
    for part in rows:
        draw(out.narrow(0, part.start, part.count), part.generator)


@dataclasses.dataclass(frozen=True, slots=True)
class AttentionCall:
    """A ``scaled_dot_product_attention`` call's arguments, by name."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None
    dropout_p: float
    is_causal: bool
    scale: float | None
    enable_gqa: bool

    @classmethod
    def parse(cls, args: Sequence[Any], kwargs: dict[str, Any]) -> AttentionCall | None:
        """The call's arguments, or ``None`` for a call this module does not replicate (unknown arguments,
        grouped-query attention, no dropout, or inputs that are not plain 4-d float tensors)."""
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        if len(args) > len(names) or set(kwargs) - set(names):
            return None
        found = {**dict(zip(names, args, strict=False)), **kwargs}
        if not {"query", "key", "value"} <= set(found):
            return None
        call = cls(
            query=found["query"],
            key=found["key"],
            value=found["value"],
            attn_mask=found.get("attn_mask"),
            dropout_p=float(found.get("dropout_p", 0.0)),
            is_causal=bool(found.get("is_causal", False)),
            scale=found.get("scale"),
            enable_gqa=bool(found.get("enable_gqa", False)),
        )
        tensors = (call.query, call.key, call.value)
        plain = all(type(t) is torch.Tensor and t.dim() == 4 and t.dtype.is_floating_point for t in tensors)
        same_heads = plain and call.query.shape[1] == call.key.shape[1] == call.value.shape[1]
        mask_ok = call.attn_mask is None or (type(call.attn_mask) is torch.Tensor and not call.is_causal)
        if not (plain and same_heads and mask_ok and not call.enable_gqa and 0 < call.dropout_p < 1):
            return None
        return call

    def kind(self, counts: Sequence[int]) -> tuple[Any, ...]:
        """What decides whether the replica computes torch's bits: dtypes, per-row shapes and strides, mask kind,
        scale, and the devices' row counts (torch multiplies one row's matrices another way than several's)."""
        mask = self.attn_mask
        mask_kind = None if mask is None else (mask.dtype, tuple(mask.shape[-3:]), mask.dim(), mask.shape[0] == 1)
        tensors = (self.query, self.key, self.value)
        return (
            tuple((t.dtype, tuple(t.shape[1:]), t.stride()) for t in tensors),
            mask_kind,
            self.is_causal,
            self.scale,
            self.dropout_p,
            tuple(sorted(set(counts))),
        )

    def rows(self, start: int, count: int) -> AttentionCall:
        """The same call on rows ``start : start + count``."""

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or t.dim() < 4 or t.shape[0] != self.query.shape[0]:
                return t  # broadcast over the rows
            return t.narrow(0, start, count)

        return dataclasses.replace(
            self,
            query=self.query.narrow(0, start, count),
            key=self.key.narrow(0, start, count),
            value=self.value.narrow(0, start, count),
            attn_mask=cut(self.attn_mask),
        )

    def torch_kernel(self) -> torch.Tensor:
        """The call through torch's own ``scaled_dot_product_attention`` (the default generator's state)."""
        return F.scaled_dot_product_attention(
            self.query,
            self.key,
            self.value,
            attn_mask=self.attn_mask,
            dropout_p=self.dropout_p,
            is_causal=self.is_causal,
            scale=self.scale,
        )


def attention_with_dropout(call: AttentionCall, rows: Sequence[DeviceRows]) -> torch.Tensor:
    """(D2) torch's composite attention with dropout over every device's rows at once, each device's attention
    mask drawn from its generator (:func:`draw_keep_masks`)."""
    q, k, v = call.query, call.key, call.value
    scale = call.scale if call.scale is not None else 1.0 / math.sqrt(q.shape[-1])
    root = math.sqrt(scale)
    scores = torch.matmul(q * root, k.transpose(-2, -1) * root)
    mask = call.attn_mask
    if call.is_causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.where(mask, 0.0, -math.inf).to(scores.dtype)
        scores = (
            scores.add_(mask) if scores.shape == torch.broadcast_shapes(scores.shape, mask.shape) else scores + mask
        )
    weights = torch._safe_softmax(scores, -1)
    keep = 1.0 - call.dropout_p
    weights = weights * draw_keep_masks(rows, weights.shape, keep, weights.dtype)
    return torch.matmul(weights, v)


def replica_admits(call: AttentionCall, rows: Sequence[DeviceRows]) -> bool:
    """Whether ``call`` may run as :func:`attention_with_dropout`: bit for bit torch's kernel for its kind.

    The first call of each kind (:meth:`AttentionCall.kind`) is checked on its own inputs: every device's rows
    through torch's kernel under that device's generator state against the batched replica computed from a
    copy of every generator, forward and backward (the gradients of ``q``, ``k`` and ``v`` for one fixed
    output gradient). Equal outputs, gradients and generator states admit the kind (for the process).
    """
    kind = call.kind([part.count for part in rows])
    if kind not in _admitted:
        _admitted[kind] = _replica_agrees(call, rows)
    return _admitted[kind]


def _replica_agrees(call: AttentionCall, rows: Sequence[DeviceRows]) -> bool:
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (call.query, call.key, call.value)]
        own = dataclasses.replace(call, query=inputs[0], key=inputs[1], value=inputs[2])
        copies = [dataclasses.replace(part, generator=_copy(part.generator)) for part in rows]
        batched = attention_with_dropout(own, copies)
        alone = []
        with torch.random.fork_rng(devices=[]):
            for part, copy in zip(rows, copies, strict=True):
                torch.set_rng_state(part.generator.get_state())
                alone.append(own.rows(part.start, part.count).torch_kernel())
                if not torch.equal(torch.get_rng_state(), copy.generator.get_state()):
                    return False
        reference = torch.cat(alone)
        if not torch.equal(batched, reference):
            return False
        upstream = torch.randn(reference.shape, generator=torch.Generator().manual_seed(0), dtype=reference.dtype)
        got = torch.autograd.grad(batched, inputs, upstream)
        expected = torch.autograd.grad(reference, inputs, upstream)
    return all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def _copy(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy
