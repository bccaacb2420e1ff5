"""Evaluation without trailing padding: the same logits from fewer columns.

Rows are padded to ``max_seq_len``; WordNet glosses at 32 tokens are half padding on average (median 16
tokens). Evaluation runs the whole model in eval mode (no dropout, no random draw), so dropping columns
changes nothing but the matmul shapes:

(P1) **Trailing columns only.** A batch keeps columns ``0 .. w-1``, where ``w - 1`` is the last column some
     row of the batch attends to (:func:`padded_width`). Positions of real tokens, and so position ids and
     rotary angles, are unchanged; a left-padded batch has no such column and is never trimmed.
(P2) **Padding is masked.** A real token gives padding keys a weight of exactly zero (the additive mask
     underflows ``exp`` to 0), so a real token's states never depend on padding columns.
(P3) **The head reads real tokens.** BERT's pooler reads the first token, GPT-2's and LLaMA's score the last
     non-padding one: the logits of a row are its real tokens' business only. A model whose head reads
     padding positions (a mean over every position, say) would break (P3), so :func:`padding_is_ignored`
     checks it once per forward on the rows with the most padding, trimmed against untrimmed; where they
     differ, evaluation keeps every column.

Only rounding differs (other matmul shapes): logits agree to ~1e-6. Training keeps every column: its
dropout masks are drawn over the padded shape, and trimming would draw others.

Examples
--------
>>> import torch
>>> padded_width(torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]))
2
>>> padded_width(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left padding: nothing to drop
3
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

__all__ = ["EvalWidth", "padded_width", "padding_is_ignored"]

log = logging.getLogger(__name__)

PROBE_ROWS = 4


def padded_width(attention_mask: torch.Tensor) -> int:
    """Columns up to and including the last one that some row of ``attention_mask`` attends to (P1)."""
    attended = attention_mask.any(dim=0).nonzero()
    return int(attended[-1]) + 1 if attended.numel() else int(attention_mask.shape[1])


def padding_is_ignored(
    attention_mask: torch.Tensor, logits_of: Callable[[torch.Tensor, int | None], torch.Tensor]
) -> bool:
    """Whether trimming trailing padding leaves the logits of the most padded rows unchanged (P3).

    ``attention_mask`` is the data set's ``[num_samples, seq_len]`` mask; ``logits_of(rows, width)``
    returns the eval-mode logits of samples ``rows`` with columns ``0 .. width - 1`` (every column when
    ``width`` is ``None``). True when no row has trailing padding (nothing would ever be trimmed).
    """
    lengths = attention_mask.sum(dim=1)
    rows = torch.argsort(lengths, stable=True)[:PROBE_ROWS]
    while padded_width(attention_mask[rows]) == attention_mask.shape[1] and rows.numel() > 1:
        rows = rows[:-1]  # the longest of them has no trailing padding: probe the others
    width = padded_width(attention_mask[rows])
    if width == attention_mask.shape[1]:
        return True
    with torch.no_grad():
        full, trimmed = logits_of(rows, None), logits_of(rows, width)
    scale = max(1.0, float(full.abs().max()))
    return bool(torch.allclose(trimmed, full, rtol=1e-4, atol=1e-5 * scale))


class EvalWidth:
    """The columns an evaluation batch needs: ``None`` (every column) or its :func:`padded_width`.

    ``logits_of`` is as for :func:`padding_is_ignored`, which runs once, on the first call.
    """

    def __init__(
        self, attention_mask: torch.Tensor, logits_of: Callable[[torch.Tensor, int | None], torch.Tensor]
    ) -> None:
        self._mask, self._logits_of = attention_mask, logits_of
        self._trims: bool | None = None

    def __call__(self, indices: torch.Tensor) -> int | None:
        """Columns for the batch of samples ``indices`` (``None``: all of them)."""
        if self._trims is None:
            self._trims = padding_is_ignored(self._mask, self._logits_of)
            log.debug("evaluation drops trailing padding: %s", self._trims)
        width = padded_width(self._mask[indices]) if self._trims else None
        return None if width == self._mask.shape[1] else width
