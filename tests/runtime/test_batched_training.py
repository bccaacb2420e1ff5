"""Batched device training computes what sequential training computes: losses, gradients, states, dropout masks.

Real peft LoRA on the 2-layer slice of the default model, a tiny GPT-2 and a tiny LLaMA, dropout on everywhere
(LoRA dropout 0.1; BERT and GPT-2 add their own 0.1 dropouts, BERT's inside SDPA attention too), devices of
unequal sizes so that steps mix batch sizes (the gathered path) and of equal sizes (the uniform path). The
batched side packs tokens (``runtime.token_packing``) as runs do; rows are padded by different amounts.
"""

from __future__ import annotations

import pytest
import torch

from hierfedlora.runtime.batched_training import DeviceBatching, batching_supported, train_devices_batched
from hierfedlora.runtime.local_training import train_device
from hierfedlora.runtime.prefix_cache import PlainForward, PrefixCache
from tests.runtime.runs import adapted_models

TOLERANCE = {"atol": 1e-5, "rtol": 0.0}
SEEDS = (11, 12, 13)
UNEQUAL = (torch.arange(0, 5), torch.arange(5, 12), torch.arange(12, 16))  # batch 3: sizes 3,2 / 3,3,1 / 3,1
EQUAL = (torch.arange(0, 6), torch.arange(6, 12), torch.arange(12, 18))


@pytest.fixture(scope="module")
def setups(request: pytest.FixtureRequest):
    slice_dir, make_decoder = request.getfixturevalue("minilm_slice_dir"), request.getfixturevalue("make_decoder_dir")
    return adapted_models(slice_dir, make_decoder, ("minilm", "gpt2", "llama"), texts=18, seq_len=10, lora_dropout=0.1)


def _forward(model, data, cached: bool, depth: int):
    model.set_depth(depth)
    return PrefixCache(model, data, chunk_size=4).forward_for(depth) if cached else PlainForward(model, data)


def _both(model, data, *, depth, cached, optimizer, devices, steps, lr):
    forward = _forward(model, data, cached, depth)
    start = model.get_adapter_state()
    rng = torch.get_rng_state()
    sequential = [
        train_device(
            model,
            forward,
            start,
            rows,
            local_steps=steps,
            batch_size=3,
            learning_rate=lr,
            seed=seed,
            optimizer=optimizer,
        )
        for rows, seed in zip(devices, SEEDS, strict=True)
    ]
    batched = train_devices_batched(
        model,
        forward,
        start,
        list(devices),
        data.labels,
        seeds=SEEDS,
        local_steps=steps,
        batch_size=3,
        learning_rate=lr,
        optimizer=optimizer,
        attention_mask=data.attention_mask,  # token packing on, as runs have it
    )
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    return start, sequential, batched


CASES = [(kind, depth, cached) for kind in ("minilm", "gpt2", "llama") for depth in (1, 2) for cached in (False, True)]


@pytest.mark.parametrize(("kind", "depth", "cached"), CASES)
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_batched_states_and_losses_match_sequential_training(setups, kind, depth, cached, optimizer):
    """Three devices of unequal sizes, four steps (epochs wrap): every device's state and mean loss agree.

    AdamW normalises each update (m / sqrt(v)), so where a gradient is near zero a rounding-level difference
    moves its element by up to the learning rate: states agree to 1e-5 at the runtime's learning rate 2e-3
    (at 0.05, one element in 3,072 differed by 2e-5). SGD is tested at 0.05.
    """
    # Arrange
    model, data = setups[kind]
    lr = 2e-3 if optimizer == "adamw" else 0.05
    # Act
    start, sequential, batched = _both(
        model, data, depth=depth, cached=cached, optimizer=optimizer, devices=UNEQUAL, steps=4, lr=lr
    )
    # Assert
    assert batching_supported(model)
    for one, many in zip(sequential, batched, strict=True):
        assert many.state.keys() == one.state.keys() == start.keys()
        torch.testing.assert_close(many.state, one.state, **TOLERANCE)
        assert many.mean_loss == pytest.approx(one.mean_loss, abs=1e-5)
    moved = [max(float((s.state[k] - start[k]).abs().max()) for k in start) for s in sequential]
    assert min(moved) > 1e-3  # every device really trained
    assert len({round(s.mean_loss, 6) for s in sequential}) == len(SEEDS)  # and saw its own batches and masks


@pytest.mark.parametrize(("kind", "depth", "cached"), CASES)
def test_batched_gradients_match_sequential_gradients(setups, kind, depth, cached):
    """One SGD step of learning rate 1 moves each tensor by minus its gradient: equal moves, equal gradients."""
    # Arrange
    model, data = setups[kind]
    # Act
    start, sequential, batched = _both(
        model, data, depth=depth, cached=cached, optimizer="sgd", devices=EQUAL, steps=1, lr=1.0
    )
    # Assert
    for one, many in zip(sequential, batched, strict=True):
        grads_one = {k: start[k] - one.state[k] for k in start}
        grads_many = {k: start[k] - many.state[k] for k in start}
        torch.testing.assert_close(grads_many, grads_one, **TOLERANCE)
        assert all(float(g.abs().sum()) > 0 for k, g in grads_one.items() if k.endswith("lora_B"))


def test_a_random_op_other_than_dropout_is_refused(setups):
    """A random draw the mode cannot split per device raises instead of drawing different numbers."""
    # Arrange
    model, data = setups["llama"]
    model.set_depth(1)
    forward = PlainForward(model, data)
    head = model.peft_model.base_model.model.score.modules_to_save["default"]
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0] + torch.rand_like(args[0]),))
    # Act / Assert
    try:
        with pytest.raises(RuntimeError, match="rand_like"):
            train_devices_batched(
                model,
                forward,
                model.get_adapter_state(),
                list(EQUAL),
                data.labels,
                seeds=SEEDS,
                local_steps=1,
                batch_size=3,
                learning_rate=0.1,
            )
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("max_devices", "memory_mib", "expected"), [(16, 1024, 16), (16, 1, 2), (1, 1024, 1), (16, 0, 1)]
)
def test_chunk_size_follows_the_memory_budget(max_devices, memory_mib, expected):
    """A chunk keeps at most memory_mib of activations: batch 16 x (depth 1 + 1) x 16 KiB = 512 KiB a device."""
    batching = DeviceBatching(
        max_devices=max_devices, memory_mib=memory_mib, activation_bytes_per_sample_per_layer=16 * 1024
    )
    assert batching.chunk_size(16, 1) == expected


def test_a_run_with_batched_devices_matches_the_sequential_run(tmp_path, small_fleet, minilm_slice_dir):
    """run_plan with batched_devices=4 trains each 2-device group as one chunk, ending where the sequential run does."""
    # Arrange
    from hierfedlora.runtime.engine import prepare_run, run_plan
    from hierfedlora.runtime.options import RunOptions
    from tests.factories import make_cost_model, make_two_group_plan

    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)

    def options(batched: int) -> RunOptions:
        return RunOptions(
            rounds=1, model=str(minilm_slice_dir), eval_samples=16, eval_batch_size=16, seed=3, batched_devices=batched
        )

    context = prepare_run(plan, fleet, options(1))
    # Act
    (one,) = list(run_plan(plan, fleet, cost, options(1), tmp_path / "one", context=context))
    (many,) = list(run_plan(plan, fleet, cost, options(4), tmp_path / "many", context=context))
    # Assert
    assert many.eval_loss == pytest.approx(one.eval_loss, abs=1e-5)
    for a, b, group in zip(one.groups, many.groups, plan.groups, strict=True):
        assert b.loss == pytest.approx(a.loss, abs=1e-5)
        assert len({many.measured_step_s[d] for d in group.device_ids}) == 1  # one batched step shared by the chunk
        assert len({one.measured_step_s[d] for d in group.device_ids}) == 2
