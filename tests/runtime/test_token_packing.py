"""Token packing: the frozen linear layers of a batched step compute its real tokens only, to the same results.

Real peft LoRA on the 2-layer slice of the default model and a tiny LLaMA (both ``nn.Linear`` models; GPT-2's
``Conv1D`` layers are not packed), dropout on everywhere, rows padded by different amounts.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from hierfedlora.runtime.batched_training import train_devices_batched
from hierfedlora.runtime.data import TokenizedData
from hierfedlora.runtime.prefix_cache import PlainForward, PrefixCache
from hierfedlora.runtime.token_packing import StepTokens, packed_linears, packing_is_exact
from tests.runtime.runs import adapted_models

SEEDS = (11, 12, 13)
DEVICES = (torch.arange(0, 5), torch.arange(5, 12), torch.arange(12, 18))


@pytest.fixture(scope="module")
def setups(request: pytest.FixtureRequest):
    slice_dir, make_decoder = request.getfixturevalue("minilm_slice_dir"), request.getfixturevalue("make_decoder_dir")
    return adapted_models(slice_dir, make_decoder, ("minilm", "llama"), texts=18, seq_len=10, lora_dropout=0.1)


def _train(model, data, *, depth, cached, packed, steps=3):
    model.set_depth(depth)
    forward = PrefixCache(model, data, chunk_size=4).forward_for(depth) if cached else PlainForward(model, data)
    return train_devices_batched(
        model,
        forward,
        model.get_adapter_state(),
        list(DEVICES),
        data.labels,
        seeds=SEEDS,
        local_steps=steps,
        batch_size=3,
        learning_rate=2e-3,
        attention_mask=data.attention_mask if packed else None,
    )


@pytest.mark.parametrize("kind", ["minilm", "llama"])
@pytest.mark.parametrize(("depth", "cached"), [(1, True), (2, False)])
def test_packed_training_ends_where_unpacked_training_ends(setups, kind, depth, cached):
    """Three steps of three devices: every state and loss agrees with the unpacked batched path to rounding
    (bit for bit on a BLAS whose rows do not depend on the call's row count; 1e-6 allows another)."""
    # Arrange
    model, data = setups[kind]
    assert not bool(data.attention_mask.all())  # there is padding to skip
    model.set_depth(depth)
    start = model.get_adapter_state()
    # Act
    unpacked = _train(model, data, depth=depth, cached=cached, packed=False)
    packed = _train(model, data, depth=depth, cached=cached, packed=True)
    # Assert
    for plain, skipping in zip(unpacked, packed, strict=True):
        torch.testing.assert_close(skipping.state, plain.state, atol=1e-6, rtol=0.0)
        assert skipping.mean_loss == pytest.approx(plain.mean_loss, abs=1e-6)
    assert max(float((u.state[k] - start[k]).abs().max()) for u in unpacked for k in start) > 1e-3


class _LinearRows(TorchFunctionMode):
    """Counts the rows every ``F.linear`` with a frozen weight computes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear and not args[1].requires_grad:
            self.rows += args[0].reshape(-1, args[0].shape[-1]).shape[0]
        return func(*args, **kwargs)


def test_the_frozen_linear_layers_compute_the_real_tokens_only(setups):
    """Packed, each frozen linear of the trained layers computes one row per real token; unpacked, every column."""
    # Arrange
    model, data = setups["minilm"]
    model.set_depth(2)
    rows = torch.arange(6)
    mask = data.attention_mask[rows]
    batch = {"input_ids": data.input_ids[rows], "attention_mask": mask}
    frozen = sum(
        1
        for layer in model.peft_model.base_model.model.bert.encoder.layer
        for module in layer.modules()
        if type(module) is torch.nn.Linear and not module.weight.requires_grad
    )
    tokens = StepTokens()
    tokens.set(mask)
    # Act
    with torch.no_grad(), _LinearRows() as plain:
        model(**batch)
    with torch.no_grad(), packed_linears(model, tokens), _LinearRows() as packed:
        model(**batch)
    # Assert: the pooler (frozen, one row a sample) computes the same rows either way
    assert frozen == 2 * 6  # query, key, value, attention output, intermediate, output in each of 2 layers
    assert int(mask.sum()) < mask.numel()
    assert plain.rows - packed.rows == frozen * (mask.numel() - int(mask.sum()))
    assert packed.rows == frozen * int(mask.sum()) + len(rows)


def test_the_probe_accepts_right_padding_and_refuses_a_head_that_reads_padding(setups):
    """BERT's pooler reads the first position: right-padded rows pack exactly, left-padded ones (the first
    position is padding) would change the logits, so the probe says no and training does not pack."""
    # Arrange
    model, data = setups["minilm"]
    model.set_depth(2)
    lengths = data.attention_mask.sum(dim=1)
    width = data.input_ids.shape[1]
    left_ids = torch.stack([row.roll(width - int(n)) for row, n in zip(data.input_ids, lengths, strict=True)])
    left_mask = torch.stack([row.roll(width - int(n)) for row, n in zip(data.attention_mask, lengths, strict=True)])
    left = TokenizedData(input_ids=left_ids, attention_mask=left_mask, labels=data.labels)
    # Act / Assert
    assert packing_is_exact(model, data)
    assert not packing_is_exact(model, left)
