"""Device-steps per second with and without the frozen-prefix cache, on the full default model.

A step is what a device does per batch: forward, loss, backward, AdamW on the active LoRA tensors and
the head (batch of 16, 64 tokens, 26 classes). The cached runs start with the batch's states warm, as
every step after a device's first epoch does. Run with::

    .venv/bin/python -m pytest tests/benchmarks/test_cache_bench.py --benchmark-only

Each benchmark checks its result: the losses are finite, and before timing, the cached loss equals the
plain one for the same seed. ``extra_info["steps_per_s"]`` holds the rate; benchmarks share a group per
depth so the table sets the two paths side by side. Timings are never asserted.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hierfedlora.models.catalog import ModelSpec
from hierfedlora.models.lora import AdaptedModel, load_adapted_model
from hierfedlora.runtime.data import TokenizedData
from hierfedlora.runtime.prefix_cache import PlainForward, PrefixCache

pytestmark = [pytest.mark.slow, pytest.mark.benchmark]

BATCH_SIZE, SEQ_LEN, NUM_LABELS = 16, 64, 26


@dataclasses.dataclass(frozen=True)
class Bench:
    model: AdaptedModel
    data: TokenizedData
    batch: torch.Tensor


@pytest.fixture(scope="module")
def bench() -> Bench:
    """The full default model with non-zero adapters, and 64 random samples of 64 tokens (some padded)."""
    model, _ = load_adapted_model(ModelSpec(path="default", num_labels=NUM_LABELS))
    generator = torch.Generator().manual_seed(0)
    params = model.trainable_parameters()
    model.set_adapter_state({key: torch.randn(p.shape, generator=generator) * 0.02 for key, p in params.items()})
    num_samples = 4 * BATCH_SIZE
    input_ids = torch.randint(1000, model.peft_model.config.vocab_size, (num_samples, SEQ_LEN), generator=generator)
    lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (num_samples,), generator=generator)
    attention_mask = (torch.arange(SEQ_LEN) < lengths[:, None]).to(torch.int64)
    data = TokenizedData(
        input_ids=input_ids * attention_mask,  # token 0 is [PAD]
        attention_mask=attention_mask,
        labels=torch.randint(0, NUM_LABELS, (num_samples,), generator=generator),
    )
    batch = torch.randperm(num_samples, generator=generator)[:BATCH_SIZE]
    return Bench(model=model, data=data, batch=batch)


@pytest.mark.parametrize("depth", [1, 3, 6])
@pytest.mark.parametrize("cached", [False, True], ids=["plain", "cached"])
def test_device_steps_per_second(benchmark, bench, depth, cached):
    """Steps per second at ``depth``; the result is checked, the time only reported."""
    # Arrange
    model, data, batch = bench.model, bench.data, bench.batch
    model.set_depth(depth)
    plain = PlainForward(model, data)
    cache = PrefixCache(model, data)
    forward = cache.forward_for(depth) if cached else plain
    cache.warm(depth, batch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain_loss = plain.loss(batch).detach()
        torch.manual_seed(0)
        cached_loss = cache.forward_for(depth).loss(batch).detach()
    torch.testing.assert_close(cached_loss, plain_loss, atol=1e-5, rtol=0.0)
    start = model.get_adapter_state()
    optimizer = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=1e-5)
    losses: list[torch.Tensor] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = forward.loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    # Act
    benchmark.group = f"depth {depth}"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            benchmark.pedantic(step, rounds=15, iterations=1, warmup_rounds=2)
    finally:
        model.set_adapter_state(start)  # the next benchmark starts from the same adapters

    # Assert
    assert losses and all(torch.isfinite(loss) for loss in losses)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["steps_per_s"] = 1.0 / benchmark.stats.stats.median
        benchmark.extra_info["cached_bytes"] = cache.cached_bytes
