"""LoRA on the top d layers, and one AdaptedModel that switches depth exactly like a fresh peft model."""

from __future__ import annotations

import collections
import doctest
import re

import pytest
import torch

from hierfedlora.models import lora
from hierfedlora.models.adapters import adapter_parameters, set_adapter_state
from hierfedlora.models.catalog import ModelSpec, load_base_model
from hierfedlora.models.lora import AdaptedModel, attach_lora, load_adapted_model
from hierfedlora.planner.errors import InvalidInputError

LAYER = re.compile(r"\.(?:layer|h|layers)\.(\d+)\.")


def _lora_params_per_layer(model: torch.nn.Module) -> dict[int, int]:
    counts: collections.Counter[int] = collections.Counter()
    for name, _ in model.named_parameters():
        if "lora_" in name:
            counts[int(LAYER.search(name).group(1))] += 1
    return dict(counts)


def _spec(request: pytest.FixtureRequest, kind: str) -> ModelSpec:
    if kind == "minilm":
        return request.getfixturevalue("slice_spec")
    return ModelSpec(path=str(request.getfixturevalue("make_decoder_dir")(kind)), num_labels=3)


def _random_state(keys: tuple[str, ...], model: AdaptedModel, seed: int) -> dict[str, torch.Tensor]:
    """Non-zero values for every key (B too), so LoRA really changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    params = model.trainable_parameters()
    return {key: torch.randn(params[key].shape, generator=generator) * 0.1 for key in keys}


def test_docstring_examples_run():
    """doctest.testmod finds no failure in models.lora."""
    # Act
    result = doctest.testmod(lora, optionflags=doctest.ELLIPSIS)

    # Assert
    assert result.failed == 0


@pytest.mark.parametrize(
    ("kind", "depth", "expected"),
    [("minilm", 1, {1: 4}), ("minilm", 2, {0: 4, 1: 4}), ("gpt2", 1, {1: 2}), ("llama", 1, {1: 4})],
)
def test_lora_lands_only_on_the_top_layers(request, kind, depth, expected):
    """A fresh peft model at depth d has LoRA A and B on each target module of the top d layers only."""
    # Arrange
    spec = _spec(request, kind)
    model, _ = load_base_model(spec, seed=0)

    # Act
    peft_model = attach_lora(model, spec, depth, seed=0)

    # Assert
    assert _lora_params_per_layer(peft_model) == expected
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in name or "modules_to_save" in name for name in trainable)


def test_set_depth_disables_lower_layers_and_freezes_them(slice_spec):
    """At depth 1 only the top layer's LoRA and the head are trainable; depth 2 brings layer 0 back."""
    # Arrange
    model, _ = load_base_model(slice_spec, seed=0)
    adapted = AdaptedModel(model, slice_spec, seed=0)

    # Act
    adapted.set_depth(1)
    shallow = set(adapted.trainable_parameters())
    shallow_grad = {name for name, p in adapted.named_parameters() if p.requires_grad}
    adapted.set_depth(2)
    deep = set(adapted.trainable_parameters())

    # Assert
    assert {key.split(".")[1] for key in shallow if key.startswith("layers.")} == {"1"}
    assert {key.split(".")[1] for key in deep if key.startswith("layers.")} == {"0", "1"}
    assert len(shallow_grad) == len(shallow) == 6
    assert adapted.depth == 2


@pytest.mark.parametrize("kind", ["minilm", "gpt2", "llama"])
def test_switching_depth_matches_a_fresh_peft_model(request, texts, kind):
    """After 2 -> 1 -> 2 -> 1, outputs and gradients equal, bit for bit, a fresh depth-1 peft model's."""
    # Arrange
    spec = _spec(request, kind)
    base, tokenizer = load_base_model(spec, seed=0)
    adapted = AdaptedModel(base, spec, max_depth=2, seed=0)
    fresh_base, _ = load_base_model(spec, seed=0)
    fresh = attach_lora(fresh_base, spec, 1, seed=0)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    labels = torch.tensor([0, 2])
    adapted.set_depth(1)
    state = _random_state(adapted.adapter_keys(), adapted, seed=1)
    adapted.set_depth(2)
    adapted.set_adapter_state(_random_state(adapted.adapter_keys(), adapted, seed=2))  # lower layer non-zero

    # Act
    adapted.set_depth(1)
    adapted.set_depth(2)
    adapted.set_depth(1)
    adapted.set_adapter_state(state)
    set_adapter_state(fresh, state)
    adapted.eval(), fresh.eval()
    ours = adapted(**batch, labels=labels)
    theirs = fresh(**batch, labels=labels)
    ours.loss.backward()
    theirs.loss.backward()

    # Assert
    assert torch.equal(ours.logits, theirs.logits)
    fresh_params = adapter_parameters(fresh)
    for key, param in adapted.trainable_parameters().items():
        assert torch.equal(param.grad, fresh_params[key].grad), key
    lower = [p for n, p in adapted.named_parameters() if "lora_" in n and LAYER.search(n).group(1) == "0"]
    assert lower and all(p.grad is None and not p.requires_grad for p in lower)


def test_lower_layers_compute_exactly_the_base_output(slice_spec, texts):
    """At depth 1, hidden states leaving layer 0 equal the plain base model's, whatever layer 0's LoRA holds."""
    # Arrange
    base, tokenizer = load_base_model(slice_spec, seed=0)
    plain, _ = load_base_model(slice_spec, seed=0)
    adapted = AdaptedModel(base, slice_spec, seed=0)
    adapted.set_adapter_state(_random_state(adapted.adapter_keys(), adapted, seed=5))
    batch = tokenizer(texts, padding=True, return_tensors="pt")

    # Act
    adapted.set_depth(1)
    adapted.eval()
    with torch.no_grad():
        ours = adapted(**batch, output_hidden_states=True).hidden_states[1]
        theirs = plain(**batch, output_hidden_states=True).hidden_states[1]

    # Assert
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("depth", [0, 3, -1, 1.0, True])
def test_bad_max_depth_is_invalid_input_naming_depth(slice_spec, depth):
    """A depth outside 1..num_layers (or not an integer) is refused with the field ``depth``."""
    # Arrange
    model, _ = load_base_model(slice_spec, seed=0)

    # Act
    with pytest.raises(InvalidInputError) as caught:
        AdaptedModel(model, slice_spec, max_depth=depth)

    # Assert
    assert caught.value.issues[0].path == "depth"
    assert caught.value.issues[0].expected == "an integer in 1..2"


def test_set_depth_beyond_the_built_depth_is_invalid_input(slice_spec):
    """A model built at depth 1 cannot serve depth 2: ``depth`` must be in 1..1."""
    # Arrange
    model, _ = load_base_model(slice_spec, seed=0)
    adapted = AdaptedModel(model, slice_spec, max_depth=1)

    # Act
    with pytest.raises(InvalidInputError) as caught:
        adapted.set_depth(2)

    # Assert
    assert str(caught.value) == "depth must be an integer in 1..1; got 2"
    assert adapted.depth == 1


def test_loading_a_state_of_another_depth_is_refused(slice_spec):
    """A depth-2 state loaded at depth 1 names the unexpected keys; a partial one names the missing keys."""
    # Arrange
    model, _ = load_base_model(slice_spec, seed=0)
    adapted = AdaptedModel(model, slice_spec, seed=0)
    deep_state = adapted.get_adapter_state()
    adapted.set_depth(1)
    partial = {k: v for k, v in adapted.get_adapter_state().items() if k.startswith("head.")}

    # Act
    with pytest.raises(InvalidInputError) as too_deep:
        adapted.set_adapter_state(deep_state)
    with pytest.raises(InvalidInputError) as too_few:
        adapted.set_adapter_state(partial)

    # Assert
    assert {issue.path for issue in too_deep.value.issues} == {
        f"state['layers.0.attention.self.{m}.lora_{f}']" for m in ("query", "value") for f in "AB"
    }
    assert len(too_few.value.issues) == 4
    assert all(issue.got == "missing" for issue in too_few.value.issues)


def test_building_leaves_the_global_rng_alone(slice_spec):
    """peft's own init runs in a forked RNG: building an AdaptedModel does not move the caller's RNG."""
    # Arrange
    model, _ = load_base_model(slice_spec, seed=0)
    before = torch.get_rng_state()

    # Act
    AdaptedModel(model, slice_spec, seed=0)

    # Assert
    assert torch.equal(torch.get_rng_state(), before)


def test_load_adapted_model_gives_the_model_and_its_tokenizer(slice_spec, texts):
    """One call loads, wraps at the requested largest depth, and returns a tokenizer that feeds it."""
    # Act
    adapted, tokenizer = load_adapted_model(slice_spec, max_depth=1, seed=0)

    # Assert
    assert (adapted.max_depth, adapted.depth, adapted.num_layers) == (1, 1, 2)
    logits = adapted(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 4)
