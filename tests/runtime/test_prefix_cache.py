"""The frozen-prefix cache trains exactly as the plain forward does: same loss, gradients, logits and RNG use.

Every model here is real (peft LoRA on the 2-layer slice of the default model, a tiny GPT-2 and a tiny
LLaMA), with random non-zero LoRA ``A`` and ``B`` and dropout on (LoRA dropout 0.1; BERT and GPT-2 add
their own 0.1 dropouts), so a difference in values, gradients or dropout masks would show.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from hierfedlora.models.adapters import layer_of
from hierfedlora.models.catalog import ModelSpec, find_layers, load_base_model
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.runtime.data import TokenizedData, tokenize_texts
from hierfedlora.runtime.prefix_cache import PlainForward, PrefixCache
from tests.factories import make_texts

KINDS = ("minilm", "gpt2", "llama")
SEQ_LEN = 10
FP32_TOLERANCE = {"atol": 1e-5, "rtol": 0.0}
HALF_TOLERANCE = {"atol": 1e-2, "rtol": 1e-2}  # states rounded to 8 (bf16) or 11 (fp16) mantissa bits


@dataclasses.dataclass(frozen=True)
class Setup:
    model: AdaptedModel
    data: TokenizedData


def _setup(spec: ModelSpec) -> Setup:
    base, tokenizer = load_base_model(spec, seed=0)
    model = AdaptedModel(base, spec, seed=0)
    generator = torch.Generator().manual_seed(1)
    params = model.trainable_parameters()
    model.set_adapter_state({key: torch.randn(p.shape, generator=generator) * 0.2 for key, p in params.items()})
    texts = make_texts(12)
    data = tokenize_texts(texts, [i % spec.num_labels for i in range(len(texts))], tokenizer, SEQ_LEN)
    return Setup(model=model, data=data)


@pytest.fixture(scope="module")
def setups(request: pytest.FixtureRequest) -> dict[str, Setup]:
    """One adapted model and data set per kind, dropout on, every LoRA tensor non-zero."""
    slice_dir, make_decoder = request.getfixturevalue("minilm_slice_dir"), request.getfixturevalue("make_decoder_dir")
    specs = {
        "minilm": ModelSpec(path=str(slice_dir), num_labels=4, lora_dropout=0.1),
        "gpt2": ModelSpec(path=str(make_decoder("gpt2")), num_labels=3, lora_dropout=0.1),
        "llama": ModelSpec(path=str(make_decoder("llama")), num_labels=3, lora_dropout=0.1),
    }
    return {kind: _setup(spec) for kind, spec in specs.items()}


def _train_call(forward, model: AdaptedModel, indices: torch.Tensor, seed: int):
    """Loss, gradients of every trainable tensor, and the RNG state after the call, from a seeded RNG.

    The global RNG is forked, so the test leaves it as it found it.
    """
    params = model.trainable_parameters()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loss = forward.loss(indices)
        rng_after = torch.get_rng_state()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    return loss.detach(), grads, rng_after


CASES = [(kind, depth) for kind in KINDS for depth in (1, 2)]
BATCH = torch.tensor([7, 0, 3, 11, 5])


@pytest.mark.parametrize(("kind", "depth"), CASES)
def test_cached_loss_and_gradients_match_the_plain_forward(setups, kind, depth):
    """With the same seed, the cached loss, every LoRA and head gradient and the RNG state after match."""
    # Arrange
    model, data = setups[kind].model, setups[kind].data
    model.set_depth(depth)
    plain, cache = PlainForward(model, data), PrefixCache(model, data, chunk_size=4)

    # Act
    plain_loss, plain_grads, plain_rng = _train_call(plain, model, BATCH, seed=3)
    cached_loss, cached_grads, cached_rng = _train_call(cache.forward_for(depth), model, BATCH, seed=3)
    other_loss, _, _ = _train_call(cache.forward_for(depth), model, BATCH, seed=4)

    # Assert
    torch.testing.assert_close(cached_loss, plain_loss, **FP32_TOLERANCE)
    torch.testing.assert_close(cached_grads, plain_grads, **FP32_TOLERANCE)
    assert torch.equal(cached_rng, plain_rng)  # (E3): the same random numbers were drawn
    assert other_loss != cached_loss  # dropout is really on, so the seed matters
    lora_b = {key: g for key, g in plain_grads.items() if key.endswith("lora_B")}
    assert {layer_of(key) for key in lora_b} == set(range(model.num_layers - depth, model.num_layers))
    assert all(g.abs().sum() > 0 for g in lora_b.values())


@pytest.mark.parametrize(("kind", "depth"), CASES)
def test_cached_logits_match_the_plain_forward(setups, kind, depth):
    """In eval mode the cached logits equal the plain ones, and no random number is drawn."""
    # Arrange
    model, data = setups[kind].model, setups[kind].data
    model.set_depth(depth)
    plain, cached = PlainForward(model, data), PrefixCache(model, data).forward_for(depth)
    rng = torch.get_rng_state()

    # Act
    with torch.no_grad():
        plain_logits, cached_logits = plain.logits(BATCH), cached.logits(BATCH)

    # Assert
    torch.testing.assert_close(cached_logits, plain_logits, **FP32_TOLERANCE)
    assert cached_logits.shape == (BATCH.numel(), model.spec.num_labels)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("kind", ["minilm", "gpt2"])
def test_plain_forward_runs_the_prefix_in_eval_mode_and_restores_modes(setups, kind):
    """(S1)-(S3): layer b's input during a training call is the eval-mode one; modes come back as they were."""
    # Arrange
    model, data = setups[kind].model, setups[kind].data
    model.set_depth(1)
    layer = find_layers(model)[1][1]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    model.train()
    model.peft_model.eval()  # an arbitrary mix of modes, to be restored
    before = [m.training for m in model.modules()]

    # Act
    try:
        with torch.random.fork_rng(devices=[]):
            PlainForward(model, data).loss(BATCH)
        with torch.no_grad():
            model.eval()(input_ids=data.input_ids[BATCH], attention_mask=data.attention_mask[BATCH])
    finally:
        handle.remove()
    model.train()
    model.peft_model.eval()

    # Assert
    assert torch.equal(seen[0], seen[1])  # no dropout in the embeddings or layer 0
    assert [m.training for m in model.modules()] == before


def _count_rows(module: nn.Module, counter: list[int]):
    return module.register_forward_hook(lambda _m, _args, output: counter.append(output.shape[0]))


@pytest.mark.parametrize("depth", [1, 2])
def test_states_are_computed_once_per_sample_and_boundary(setups, depth):
    """Rows through the frozen prefix: each sample once per boundary, however often it is asked for."""
    # Arrange
    model, data = setups["minilm"].model, setups["minilm"].data
    model.set_depth(depth)
    cache = PrefixCache(model, data, chunk_size=1)  # one row per computed state, no padding rows
    forward = cache.forward_for(depth)
    first, second = torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 4, 5, 6])
    _, layers = find_layers(model)
    frozen = layers[0] if depth == 1 else model.peft_model.base_model.model.bert.embeddings
    with torch.no_grad():  # the first evaluation probes whether padding can be dropped (runtime.padding): not counted
        forward.logits(torch.tensor([7]))
    rows: list[int] = []
    handle = _count_rows(frozen, rows)

    # Act
    try:
        for batch in (first, second, first, second):
            forward.loss(batch)
            with torch.no_grad():
                forward.logits(batch)
    finally:
        handle.remove()

    # Assert
    distinct = 7
    # at depth 2 the embeddings are the prefix: they also run (on real ids) in every cached forward, as (E2) says
    forwards = 0 if depth == 1 else 2 * (2 * first.numel() + 2 * second.numel())
    assert sum(rows) == distinct + forwards
    seq, hidden = data.seq_len, model.peft_model.config.hidden_size
    assert cache.cached_bytes == (distinct + 1) * seq * hidden * 4  # and sample 7's, from the probing evaluation


def test_switching_depth_between_calls_stays_exact(setups):
    """One cache serves depths 1, 2, 1: each call matches the plain forward and both boundaries are kept."""
    # Arrange
    model, data = setups["gpt2"].model, setups["gpt2"].data
    cache, plain = PrefixCache(model, data), PlainForward(model, data)
    seq, hidden = data.seq_len, model.peft_model.config.hidden_size

    for depth in (1, 2, 1):
        # Act
        model.set_depth(depth)
        cached_loss, cached_grads, _ = _train_call(cache.forward_for(depth), model, BATCH, seed=depth)
        plain_loss, plain_grads, _ = _train_call(plain, model, BATCH, seed=depth)

        # Assert
        torch.testing.assert_close(cached_loss, plain_loss, **FP32_TOLERANCE)
        torch.testing.assert_close(cached_grads, plain_grads, **FP32_TOLERANCE)
    assert cache.cached_bytes == 2 * BATCH.numel() * seq * hidden * 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_halves_memory_and_stays_close(setups, dtype):
    """16-bit states take half the bytes; loss and gradients stay within 1e-2 of the plain forward."""
    # Arrange
    model, data = setups["minilm"].model, setups["minilm"].data
    model.set_depth(1)
    full, half = PrefixCache(model, data), PrefixCache(model, data, dtype=dtype)

    # Act
    full.warm(1, BATCH)
    half_loss, half_grads, _ = _train_call(half.forward_for(1), model, BATCH, seed=0)
    plain_loss, plain_grads, _ = _train_call(PlainForward(model, data), model, BATCH, seed=0)

    # Assert
    assert half.cached_bytes * 2 == full.cached_bytes > 0
    torch.testing.assert_close(half_loss, plain_loss, **HALF_TOLERANCE)
    torch.testing.assert_close(half_grads, plain_grads, **HALF_TOLERANCE)


def test_states_do_not_depend_on_the_order_samples_are_asked_for(setups):
    """(E5) Two request histories give bit-identical states, so a resumed run trains as an uninterrupted one."""
    # Arrange
    model, data = setups["minilm"].model, setups["minilm"].data
    model.set_depth(1)
    one, other = PrefixCache(model, data, chunk_size=4), PrefixCache(model, data, chunk_size=4)
    everything = torch.arange(data.num_samples)

    # Act
    one.warm(1, everything)
    for part in (torch.tensor([5]), torch.tensor([11, 2, 3]), torch.arange(data.num_samples).flip(0)):
        other.warm(1, part)
    with torch.no_grad():
        logits = [cache.forward_for(1).logits(everything) for cache in (one, other)]

    # Assert
    assert torch.equal(logits[0], logits[1])


def _warm_turn(cache: PrefixCache, model: AdaptedModel, depth: int, bound: int) -> int:
    """One turn at ``depth`` over every sample: the rows it had to compute; the bound holds after it."""
    model.set_depth(depth)
    missing = cache.warm(depth, torch.arange(cache._data.num_samples))
    assert cache.cached_bytes <= bound
    return missing


def test_a_full_cache_shares_its_bound_between_depths_in_turns_and_stays_exact(minilm_four_layer_dir):
    """Groups at depths 1 and 2 train in turns. A cache with room for half their rows splits it evenly and
    then keeps the same rows turn after turn (plain LRU evicted the other depth whole: every turn recomputed
    every row); it never passes its bound, and its forwards equal an unbounded cache's bit for bit."""
    # Arrange
    spec = ModelSpec(path=str(minilm_four_layer_dir), num_labels=4, lora_dropout=0.1)
    setup = _setup(spec)
    model, data = setup.model, setup.data
    row_bytes = data.seq_len * model.peft_model.config.hidden_size * 4
    bound = 6 * row_bytes  # 12 samples at 2 boundaries: a quarter of what they need
    bounded = PrefixCache(model, data, max_bytes=bound, chunk_size=1)
    roomy = PrefixCache(model, data, chunk_size=1)
    everything = torch.arange(data.num_samples)

    # Act
    computed = [_warm_turn(bounded, model, depth, bound) for depth in (1, 2, 1, 2, 1, 2)]
    shares = bounded.cached_bytes_by_depth

    # Assert
    assert computed == [12, 12, 9, 9, 9, 9]  # after depth 2's first turn, 3 rows each stay put
    assert shares == {1: 3 * row_bytes, 2: 3 * row_bytes}
    for depth in (1, 2):
        model.set_depth(depth)
        with torch.no_grad():
            kept, unbounded = (cache.forward_for(depth).logits(everything) for cache in (bounded, roomy))
            assert torch.equal(kept, unbounded)
        cached_loss, cached_grads, _ = _train_call(bounded.forward_for(depth), model, BATCH, seed=depth)
        plain_loss, plain_grads, _ = _train_call(PlainForward(model, data), model, BATCH, seed=depth)
        torch.testing.assert_close(cached_loss, plain_loss, **FP32_TOLERANCE)
        torch.testing.assert_close(cached_grads, plain_grads, **FP32_TOLERANCE)
    assert bounded.cached_bytes <= bound


def test_a_depth_no_longer_in_turn_is_evicted_whole(minilm_four_layer_dir):
    """Turns at depths 1, 2, 3, 1, 3 (as after a re-plan from depths 1 and 2 to 1 and 3): when depth 3 comes
    back, depth 2 has not been asked for since depth 3's previous turn, so its rows go; the depths still in
    turn then share the bound. With no room at all nothing is kept and losses still match the plain forward."""
    # Arrange
    spec = ModelSpec(path=str(minilm_four_layer_dir), num_labels=4)
    setup = _setup(spec)
    model, data = setup.model, setup.data
    row_bytes = data.seq_len * model.peft_model.config.hidden_size * 4
    bound = 6 * row_bytes
    cache = PrefixCache(model, data, max_bytes=bound, chunk_size=1)
    none = PrefixCache(model, data, max_bytes=0)

    # Act
    shares = []
    for depth in (1, 2, 3, 1, 3, 1):
        _warm_turn(cache, model, depth, bound)
        shares.append({d: b // row_bytes for d, b in cache.cached_bytes_by_depth.items()})
    model.set_depth(1)
    cached_loss, cached_grads, _ = _train_call(none.forward_for(1), model, BATCH, seed=0)
    plain_loss, plain_grads, _ = _train_call(PlainForward(model, data), model, BATCH, seed=0)

    # Assert
    assert shares == [
        {1: 6},
        {1: 3, 2: 3},
        {1: 2, 2: 2, 3: 2},  # a depth's first turn takes from the richest while they hold more
        {1: 2, 2: 2, 3: 2},  # equal shares: nothing moves
        {1: 2, 3: 4},  # depth 2 sat out depth 3's previous turn and since: evicted whole
        {1: 3, 3: 3},
    ]
    assert none.cached_bytes == 0
    torch.testing.assert_close(cached_loss, plain_loss, **FP32_TOLERANCE)
    torch.testing.assert_close(cached_grads, plain_grads, **FP32_TOLERANCE)


def test_a_forward_refuses_a_model_at_another_depth(setups):
    """forward_for(2) used while the model is at depth 1 raises instead of training the wrong layers."""
    # Arrange
    model, data = setups["minilm"].model, setups["minilm"].data
    model.set_depth(1)
    forward = PrefixCache(model, data).forward_for(2)

    # Act
    with pytest.raises(InvalidInputError) as info:
        forward.loss(BATCH)

    # Assert
    assert [issue.path for issue in info.value.issues] == ["depth"]
    assert "set_depth(2)" in str(info.value)


def test_bad_arguments_are_reported_together(setups):
    """A bad dtype, max_bytes and chunk_size give three issues in one error; a bad depth its own."""
    # Arrange
    model, data = setups["minilm"].model, setups["minilm"].data

    # Act
    with pytest.raises(InvalidInputError) as info:
        PrefixCache(model, data, dtype=torch.int64, max_bytes=-1, chunk_size=0)
    with pytest.raises(InvalidInputError) as depth_info:
        PrefixCache(model, data).forward_for(3)

    # Assert
    assert [issue.path for issue in info.value.issues] == ["dtype", "max_bytes", "chunk_size"]
    assert [issue.path for issue in depth_info.value.issues] == ["depth"]
