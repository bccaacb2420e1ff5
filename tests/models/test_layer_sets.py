"""AdaptedModel.set_layers: LoRA live on exactly the listed layers (FedRA), gradients nowhere else."""

from __future__ import annotations

import pytest
import torch

from hierfedlora.models.adapters import layer_of
from hierfedlora.models.catalog import ModelSpec, load_base_model
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.planner.errors import InvalidInputError


@pytest.fixture(scope="module")
def four_layers(request: pytest.FixtureRequest):
    """A 4-layer slice of the default model with LoRA on every layer, every LoRA tensor random, and its tokenizer."""
    spec = ModelSpec(path=str(request.getfixturevalue("minilm_four_layer_dir")), num_labels=3)
    base, tokenizer = load_base_model(spec, seed=0)
    model = AdaptedModel(base, spec, seed=0)
    generator = torch.Generator().manual_seed(5)
    params = model.trainable_parameters()
    model.set_adapter_state({k: torch.randn(p.shape, generator=generator) * 0.1 for k, p in params.items()})
    return model, tokenizer


def test_set_layers_trains_exactly_the_listed_layers(four_layers, texts):
    """Layers (1, 3): their LoRA and the head get gradients; layers 0 and 2 get none and are frozen; depth is 3."""
    # Arrange
    model, tokenizer = four_layers
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model.set_depth(4)
    everything = {key: param for key, param in model.trainable_parameters().items()}
    for param in everything.values():
        param.grad = None
    # Act
    model.set_layers((3, 1))
    keys = model.adapter_keys()
    model.eval()
    model(**batch, labels=torch.tensor([0, 2])).loss.backward()
    # Assert
    assert model.layers == (1, 3) and model.depth == 3
    assert {layer_of(k) for k in keys} == {1, 3, None}
    for key, param in everything.items():
        if layer_of(key) in (1, 3) or layer_of(key) is None:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, key
        else:
            assert not param.requires_grad and param.grad is None, key
    assert set(model.get_adapter_state()) == set(keys)
    for param in everything.values():
        param.grad = None


def test_set_depth_after_set_layers_restores_the_top_layers(four_layers):
    """set_depth(2) after a layer set makes layers 2 and 3 live again."""
    # Arrange
    model, _ = four_layers
    model.set_layers((0, 2))
    # Act
    model.set_depth(2)
    # Assert
    assert model.layers == (2, 3) and model.depth == 2
    assert {layer_of(k) for k in model.adapter_keys()} == {2, 3, None}


def test_a_state_of_other_layers_is_refused_naming_the_layer_set(four_layers):
    """Loading a depth-2 state while layers (0, 3) are live names the missing and unexpected keys."""
    # Arrange
    model, _ = four_layers
    model.set_depth(2)
    state = model.get_adapter_state()
    model.set_layers((0, 3))
    # Act
    with pytest.raises(InvalidInputError) as info:
        model.set_adapter_state(state)
    # Assert
    assert "a state of layers [0, 3]" in str(info.value)
    assert any("layers.0." in issue.path for issue in info.value.issues)
    assert any("layers.2." in issue.path for issue in info.value.issues)


@pytest.mark.parametrize("bad", [(), (4,), (1, 1), (-1, 2), ("1",)])
def test_bad_layer_sets_are_refused_by_name(four_layers, bad):
    """Empty, out-of-range, repeated or non-integer layer sets raise InvalidInputError on field 'layers'."""
    # Arrange
    model, _ = four_layers
    # Act
    with pytest.raises(InvalidInputError) as info:
        model.set_layers(bad)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["layers"]
    assert "0..3" in str(info.value)
