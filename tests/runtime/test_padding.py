"""Evaluation drops trailing padding columns and computes the logits of every column, to rounding.

Real peft LoRA on the 2-layer slice of the default model, a tiny GPT-2 and a tiny LLaMA (its head reads the last
real token), plain and cached forwards; texts of 1 to 8 words padded to 12 tokens.
"""

from __future__ import annotations

import pytest
import torch

from hierfedlora.models.lora import AdaptedModel
from hierfedlora.runtime.local_training import evaluate
from hierfedlora.runtime.padding import padded_width, padding_is_ignored
from hierfedlora.runtime.prefix_cache import PlainForward, PrefixCache
from tests.runtime.runs import adapted_models

SEQ_LEN = 12


@pytest.fixture(scope="module")
def setups(request: pytest.FixtureRequest):
    slice_dir, make_decoder = request.getfixturevalue("minilm_slice_dir"), request.getfixturevalue("make_decoder_dir")
    return adapted_models(slice_dir, make_decoder, ("minilm", "gpt2", "llama"), texts=16, seq_len=SEQ_LEN)


def _reference_logits(model: AdaptedModel, data, rows: torch.Tensor) -> torch.Tensor:
    """Every column, the whole model in eval mode: the path evaluation took before it trimmed."""
    model.peft_model.eval()
    with torch.no_grad():
        return model(input_ids=data.input_ids[rows], attention_mask=data.attention_mask[rows]).logits


def _widths_seen(model: AdaptedModel) -> tuple[list[int], object]:
    """Record the number of columns of every input the model receives."""
    seen: list[int] = []
    handle = model.peft_model.register_forward_pre_hook(
        lambda _m, _args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    return seen, handle


@pytest.mark.parametrize("kind", ["minilm", "gpt2", "llama"])
@pytest.mark.parametrize("cached", [False, True])
def test_evaluation_drops_trailing_padding_and_keeps_the_logits(setups, kind, cached):
    """Short rows are evaluated on fewer columns; their logits equal the every-column logits to 1e-5."""
    # Arrange
    model, data = setups[kind]
    model.set_depth(1)
    forward = PrefixCache(model, data, chunk_size=4).forward_for(1) if cached else PlainForward(model, data)
    short = torch.argsort(data.attention_mask.sum(dim=1), stable=True)[:5]
    expected = _reference_logits(model, data, short)
    seen, handle = _widths_seen(model)
    # Act
    try:
        with torch.inference_mode():
            logits = forward.logits(short)
    finally:
        handle.remove()
    # Assert
    width = padded_width(data.attention_mask[short])
    assert width < SEQ_LEN and seen[-1] == width  # the batch really ran on fewer columns
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0.0)


def test_a_head_that_reads_padding_keeps_every_column(setups):
    """A pooler fed the mean over every position depends on padding: the probe sees it, nothing is dropped."""
    # Arrange
    model, data = setups["minilm"]
    model.set_depth(2)
    pooler = model.peft_model.base_model.model.bert.pooler
    handle = pooler.register_forward_pre_hook(lambda _m, args: (args[0].mean(dim=1, keepdim=True).expand_as(args[0]),))
    short = torch.argsort(data.attention_mask.sum(dim=1), stable=True)[:5]
    seen, seen_handle = _widths_seen(model)
    # Act
    try:
        expected = _reference_logits(model, data, short)
        with torch.inference_mode():
            logits = PlainForward(model, data).logits(short)
    finally:
        handle.remove()
        seen_handle.remove()
    # Assert
    assert seen[-1] == SEQ_LEN
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0.0)


def test_the_probe_sees_a_head_that_reads_padding():
    """padding_is_ignored is false when the logits change with the columns, true when nothing has padding."""
    # Arrange
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3)

    def mean_of_columns(rows: torch.Tensor, width: int | None) -> torch.Tensor:
        return values[rows, :width].mean(dim=1, keepdim=True)

    def first_column(rows: torch.Tensor, width: int | None) -> torch.Tensor:
        return values[rows, :1]

    # Act / Assert
    assert not padding_is_ignored(mask, mean_of_columns)
    assert padding_is_ignored(mask, first_column)
    assert padding_is_ignored(torch.ones(3, 4, dtype=torch.long), mean_of_columns)


def test_evaluate_matches_every_column_evaluation(setups):
    """evaluate() on length-sorted rows in small batches gives the every-column loss and accuracy."""
    # Arrange
    model, data = setups["llama"]
    model.set_depth(2)
    rows = torch.argsort(data.attention_mask.sum(dim=1), stable=True)
    logits = _reference_logits(model, data, rows)
    expected_loss = float(torch.nn.functional.cross_entropy(logits, data.labels[rows]))
    expected_accuracy = float((logits.argmax(dim=-1) == data.labels[rows]).float().mean())
    # Act
    loss, accuracy = evaluate(PlainForward(model, data), data.labels, rows, batch_size=4)
    # Assert
    assert loss == pytest.approx(expected_loss, abs=1e-5)
    assert accuracy == expected_accuracy
