"""Per-device dropout draws the masks torch draws: the noise, the attention, and the generators' states after.

Against torch itself, per device: ``bernoulli_`` on each device's rows under its own generator, and torch's
``scaled_dot_product_attention`` under each device's generator state, bit for bit (outputs, gradients,
states). Then batched training with the fast paths against batched training without them, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

import hierfedlora.runtime.batched_training as batched_training
import hierfedlora.runtime.device_dropout as device_dropout
from hierfedlora.runtime.batched_training import train_devices_batched
from hierfedlora.runtime.device_dropout import (
    AttentionCall,
    DeviceRows,
    attention_with_dropout,
    draw_keep_masks,
    replica_admits,
)
from hierfedlora.runtime.prefix_cache import PlainForward
from tests.runtime.runs import adapted_models

COUNTS = (3, 1, 4)  # unequal devices


def _rows(seeds=(5, 6, 7), counts=COUNTS) -> list[DeviceRows]:
    rows, start = [], 0
    for seed, count in zip(seeds, counts, strict=True):
        rows.append(DeviceRows(start, count, torch.Generator().manual_seed(seed)))
        start += count
    return rows


def _bernoulli_per_device(rows, shape, keep, dtype) -> torch.Tensor:
    """What batched training drew before: one ``bernoulli_`` per device on its rows, then ``div_``."""
    noises = []
    for part in rows:
        noises.append(torch.empty(part.count, *shape[1:], dtype=dtype).bernoulli_(keep, generator=part.generator))
    return torch.cat(noises).div_(keep)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.25])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("uniform", [True, False])
def test_keep_masks_are_bernoulli_per_device(monkeypatch, keep, dtype, uniform):
    """Both ways of drawing (uniform doubles where they reproduce ``bernoulli_``, ``bernoulli_`` itself where not)
    give each device's ``bernoulli_`` noise and leave every generator where ``bernoulli_`` leaves it."""
    # Arrange
    shape = (sum(COUNTS), 5, 7)
    if not uniform:
        monkeypatch.setitem(device_dropout._matches, dtype, False)
    expected_rows, got_rows = _rows(), _rows()
    # Act
    expected = _bernoulli_per_device(expected_rows, shape, keep, dtype)
    got = draw_keep_masks(got_rows, shape, keep, dtype)
    # Assert
    assert got.dtype == dtype and got.shape == shape
    assert torch.equal(got, expected)
    assert 0 < float((got == 0).float().mean()) < 1  # masks with both values
    for a, b in zip(expected_rows, got_rows, strict=True):
        assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_uniform_draws_are_checked_against_bernoulli_once_per_dtype(monkeypatch):
    """The check runs on the first request for a dtype, and its answer is what draw_keep_masks follows."""
    monkeypatch.setattr(device_dropout, "_matches", {})
    answer = device_dropout.uniform_draws_match_bernoulli(torch.float32)
    assert device_dropout._matches == {torch.float32: answer}
    device_dropout._matches[torch.float32] = not answer  # the cached answer is the one used
    assert device_dropout.uniform_draws_match_bernoulli(torch.float32) is (not answer)


def _qkv(rows: int, heads=2, length=5, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, heads, length, dim, generator=generator, requires_grad=True) for _ in range(3)]


MASKS = {
    "none": lambda n: None,
    "bool rows": lambda n: (
        torch.arange(5).expand(n, 1, 5, 5) < torch.tensor([5, 3, 4, 2, 5, 1, 4, 3])[:n, None, None, None]
    ),
    "float broadcast": lambda n: torch.tensor([0.0, 0.0, -1e9, 0.0, -0.5]).expand(1, 1, 1, 5),
    "bool 2-d": lambda n: torch.ones(5, 5, dtype=torch.bool).triu(),
    "causal": lambda n: "causal",
}


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_replica_is_torch_kernel_per_device(mask_name, scale):
    """Every device's rows of the one batched call equal torch's kernel on those rows under that device's
    generator state: outputs, gradients of q, k and v, generators after."""
    # Arrange
    rows_alone, rows_batched = _rows(), _rows()
    n = sum(COUNTS)
    mask = MASKS[mask_name](n)
    causal = isinstance(mask, str)
    q, k, v = _qkv(n)
    call = AttentionCall(q, k, v, None if causal else mask, 0.3, causal, scale, False)
    upstream = torch.randn(n, 2, 5, 4, generator=torch.Generator().manual_seed(9))
    # Act: torch's kernel device by device
    alone = []
    with torch.random.fork_rng(devices=[]):
        for part in rows_alone:
            torch.set_rng_state(part.generator.get_state())
            alone.append(call.rows(part.start, part.count).torch_kernel())
            part.generator.set_state(torch.get_rng_state())
    expected = torch.cat(alone)
    expected_grads = torch.autograd.grad(expected, (q, k, v), upstream)
    got = attention_with_dropout(call, rows_batched)
    got_grads = torch.autograd.grad(got, (q, k, v), upstream)
    # Assert
    assert torch.equal(got, expected)
    for a, b in zip(got_grads, expected_grads, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(rows_alone, rows_batched, strict=True):
        assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_the_replica_admits_what_it_matches_and_refuses_what_it_does_not(monkeypatch):
    """A kind of call is checked once against torch's kernel: the plain call is admitted, and a replica that
    draws other masks (an off-by-one keep probability) is refused, without moving the real generators."""
    monkeypatch.setattr(device_dropout, "_admitted", {})
    q, k, v = _qkv(sum(COUNTS))
    rows = _rows()
    before = [r.generator.get_state() for r in rows]
    assert replica_admits(AttentionCall(q, k, v, None, 0.3, False, None, False), rows)
    assert [torch.equal(a, r.generator.get_state()) for a, r in zip(before, rows, strict=True)] == [True] * 3

    real = device_dropout.draw_keep_masks
    monkeypatch.setattr(device_dropout, "draw_keep_masks", lambda r, s, keep, d: real(r, s, keep * 0.5, d))
    assert not replica_admits(AttentionCall(q, k, v, None, 0.2, False, None, False), rows)
    assert len(device_dropout._admitted) == 2


@pytest.mark.parametrize("counts", [(3, 3, 3), (3, 3, 1), (2, 1, 2)])
@pytest.mark.parametrize("transposed", [False, True])
def test_the_replica_is_admitted_exactly_when_it_is_torch_kernel_bit_for_bit(monkeypatch, counts, transposed):
    """BERT's layout (12 heads of 32, q/k/v transposed views of the projections) with one-row devices among them:
    whatever this host's BLAS does with them, admitted means equal to torch's kernel per device, forward and
    backward, and refused means not."""
    monkeypatch.setattr(device_dropout, "_admitted", {})
    n, generator = sum(counts), torch.Generator().manual_seed(4)
    if transposed:
        leaves = [torch.randn(n, 10, 12 * 32, generator=generator, requires_grad=True) for _ in range(3)]
        q, k, v = (t.view(n, 10, 12, 32).transpose(1, 2) for t in leaves)
    else:
        leaves = [torch.randn(n, 12, 10, 32, generator=generator, requires_grad=True) for _ in range(3)]
        q, k, v = leaves
    mask = torch.arange(10).expand(n, 1, 10, 10) < torch.arange(10 - n, 10)[:, None, None, None]
    call = AttentionCall(q, k, v, mask, 0.1, False, None, False)
    upstream = torch.randn(n, 12, 10, 32, generator=generator)
    # Act
    admitted = replica_admits(call, _rows(counts=counts))
    alone, rows = [], _rows(counts=counts)
    with torch.random.fork_rng(devices=[]):
        for part in rows:
            torch.set_rng_state(part.generator.get_state())
            alone.append(call.rows(part.start, part.count).torch_kernel())
    expected = torch.cat(alone)
    replica = attention_with_dropout(call, _rows(counts=counts))
    same = torch.equal(replica, expected) and all(
        torch.equal(a, b)
        for a, b in zip(
            torch.autograd.grad(replica, leaves, upstream), torch.autograd.grad(expected, leaves, upstream), strict=True
        )
    )
    # Assert
    assert admitted == same


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {"query": 1}),  # not tensors
        ((torch.zeros(2, 2, 3, 4),) * 3, {"dropout_p": 0.0}),  # no dropout
        ((torch.zeros(2, 2, 3, 4), torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4)), {"dropout_p": 0.1}),  # GQA
        ((torch.zeros(2, 2, 3, 4),) * 3, {"dropout_p": 0.1, "enable_gqa": True}),
        ((torch.zeros(2, 2, 3, 4),) * 3, {"dropout_p": 0.1, "unknown": 1}),
        ((torch.zeros(2, 3, 4),) * 3, {"dropout_p": 0.1}),  # 3-d
    ],
)
def test_calls_the_replica_does_not_cover_are_left_to_torch(args, kwargs):
    assert AttentionCall.parse(args, kwargs) is None


def test_a_call_is_read_from_positional_and_keyword_arguments():
    q = torch.zeros(2, 2, 3, 4)
    call = AttentionCall.parse((q, q, q, None, 0.1), {"scale": 0.5})
    assert call is not None and call.dropout_p == 0.1 and call.scale == 0.5 and not call.is_causal


@pytest.fixture(scope="module")
def setups(request: pytest.FixtureRequest):
    slice_dir, make_decoder = request.getfixturevalue("minilm_slice_dir"), request.getfixturevalue("make_decoder_dir")
    return adapted_models(slice_dir, make_decoder, ("minilm", "gpt2"), texts=18, seq_len=10, lora_dropout=0.1)


@pytest.mark.parametrize("kind", ["minilm", "gpt2"])
def test_batched_training_is_the_same_bits_with_and_without_the_fast_draws(setups, monkeypatch, kind):
    """Four steps of three unequal devices at depth 2 (BERT: attention dropout inside SDPA; both: hidden and
    LoRA dropout): the trained states and losses equal those drawn with bernoulli_ per device and torch's
    attention per device."""
    model, data = setups[kind]
    model.set_depth(2)
    forward = PlainForward(model, data)
    start = model.get_adapter_state()
    devices = [torch.arange(0, 5), torch.arange(5, 12), torch.arange(12, 16)]

    def train():
        return train_devices_batched(
            model,
            forward,
            start,
            devices,
            data.labels,
            seeds=(11, 12, 13),
            local_steps=4,
            batch_size=3,
            learning_rate=2e-3,
            attention_mask=data.attention_mask,
        )

    fast = train()
    monkeypatch.setattr(device_dropout, "_matches", {torch.float32: False})
    monkeypatch.setattr(batched_training, "replica_admits", lambda call, rows: False)
    slow = train()
    for a, b in zip(fast, slow, strict=True):
        assert a.mean_loss == b.mean_loss
        assert a.state.keys() == b.state.keys()
        assert all(torch.equal(a.state[key], b.state[key]) for key in a.state)
    assert any(not torch.equal(fast[0].state[key], start[key]) for key in start)


def test_dropout_over_a_tensor_not_split_by_rows_is_refused(setups):
    """Masks are drawn per device on dim 0: a dropout whose dim 0 is not the step's rows raises and names the shape
    instead of drawing masks across devices."""
    model, data = setups["gpt2"]
    model.set_depth(1)
    head = model.peft_model.base_model.model.score.modules_to_save["default"]
    handle = head.register_forward_pre_hook(
        lambda _m, args: (torch.nn.functional.dropout(args[0].transpose(0, -1).contiguous(), 0.1).transpose(0, -1),)
    )
    try:
        with pytest.raises(RuntimeError, match=r"dropout under batched device training on a tensor of shape \("):
            train_devices_batched(
                model,
                PlainForward(model, data),
                model.get_adapter_state(),
                [torch.arange(0, 6), torch.arange(6, 12)],
                data.labels,
                seeds=(1, 2),
                local_steps=1,
                batch_size=3,
                learning_rate=0.1,
            )
    finally:
        handle.remove()
