"""Adapter state keyed by layer: the key contract, exact round-trips, seeded init, errors."""

from __future__ import annotations

import doctest

import pytest
import torch

from hierfedlora.models import adapters
from hierfedlora.models.adapters import (
    adapter_keys,
    get_adapter_state,
    initial_adapter_state,
    layer_of,
    lora_layers,
    set_adapter_state,
    state_bytes,
)
from hierfedlora.models.catalog import load_base_model
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.planner.errors import InvalidInputError

# 2-layer slice, r=8 on query and value (384 -> 384), 4 classes
LAYER_BYTES = 2 * (8 * 384 + 384 * 8) * 4
HEAD_BYTES = (4 * 384 + 4) * 4


@pytest.fixture
def adapted(slice_spec) -> AdaptedModel:
    model, _ = load_base_model(slice_spec, seed=0)
    return AdaptedModel(model, slice_spec, seed=0)


def test_docstring_examples_run():
    """doctest.testmod finds no failure in models.adapters."""
    # Act
    result = doctest.testmod(adapters, optionflags=doctest.ELLIPSIS)

    # Assert
    assert result.failed == 0


def test_keys_follow_the_contract(adapted):
    """A depth-1 state holds layer 1's query/value A and B, then the head, in that order."""
    # Act
    keys = adapter_keys(adapted, 1)

    # Assert
    assert keys == (
        "layers.1.attention.self.query.lora_A",
        "layers.1.attention.self.query.lora_B",
        "layers.1.attention.self.value.lora_A",
        "layers.1.attention.self.value.lora_B",
        "head.classifier.weight",
        "head.classifier.bias",
    )
    assert [layer_of(k) for k in keys] == [1, 1, 1, 1, None, None]
    assert lora_layers(adapted) == (0, 1)


def test_state_bytes_are_the_layers_and_the_head(adapted):
    """Depth d moves d layers' LoRA plus the head: 24,576 fp32 bytes a layer, 6,160 for a 4-way head."""
    # Act
    shallow, deep = get_adapter_state(adapted, 1), get_adapter_state(adapted, 2)

    # Assert
    assert state_bytes(shallow) == LAYER_BYTES + HEAD_BYTES
    assert state_bytes(deep) == 2 * LAYER_BYTES + HEAD_BYTES
    assert shallow["layers.1.attention.self.query.lora_A"].shape == (8, 384)
    assert shallow["layers.1.attention.self.query.lora_B"].shape == (384, 8)


def test_get_then_set_round_trips_exactly(adapted):
    """Values set are the values read back, bit for bit, and what is read is a copy, not the parameter."""
    # Arrange
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=generator) for k, v in get_adapter_state(adapted, 2).items()}

    # Act
    set_adapter_state(adapted, state)
    read = get_adapter_state(adapted, 2)
    read["head.classifier.bias"].add_(1.0)
    again = get_adapter_state(adapted, 2)

    # Assert
    assert read.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert all(not v.requires_grad for v in again.values())


def test_initial_state_is_seeded_and_starts_at_the_base_model(slice_spec, adapted):
    """Same seed, same state; B is zero; the head equals the one load_base_model draws for that seed."""
    # Arrange
    loaded, _ = load_base_model(slice_spec, seed=7)

    # Act
    first = initial_adapter_state(adapted, 2, seed=7)
    again = initial_adapter_state(adapted, 2, seed=7)
    other = initial_adapter_state(adapted, 2, seed=8)
    shallow = initial_adapter_state(adapted, 1, seed=7)

    # Assert
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["layers.1.attention.self.query.lora_A"], other["layers.1.attention.self.query.lora_A"])
    assert all(torch.count_nonzero(v) == 0 for k, v in first.items() if k.endswith("lora_B"))
    assert torch.equal(first["head.classifier.weight"], loaded.classifier.weight)
    assert all(torch.equal(shallow[k], first[k]) for k in shallow)  # a layer's init does not depend on depth


def test_setting_unknown_keys_or_wrong_shapes_reports_each_and_copies_nothing(adapted):
    """An unknown key and a wrongly shaped tensor give two issues; the model keeps its values."""
    # Arrange
    before = get_adapter_state(adapted, 2)
    state = {
        "layers.1.attention.self.query.lora_A": torch.ones(8, 384),
        "layers.1.attention.self.key.lora_A": torch.ones(8, 384),
        "head.classifier.bias": torch.ones(5),
    }

    # Act
    with pytest.raises(InvalidInputError) as caught:
        set_adapter_state(adapted, state)

    # Assert
    issues = {issue.path: issue for issue in caught.value.issues}
    assert set(issues) == {"state['layers.1.attention.self.key.lora_A']", "state['head.classifier.bias']"}
    assert issues["state['head.classifier.bias']"].got == (5,)
    assert "layers 0..1 or the head" in issues["state['layers.1.attention.self.key.lora_A']"].expected
    after = get_adapter_state(adapted, 2)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("key", ["layers.x.query.lora_A", "layer.1.query.lora_A", "head.", "layers.1.query.weight", 3])
def test_malformed_keys_are_invalid_input(key):
    """A key of neither form is refused with the field ``key``."""
    # Act
    with pytest.raises(InvalidInputError) as caught:
        layer_of(key)

    # Assert
    assert caught.value.issues[0].path == "key"


def test_depth_beyond_the_layers_with_lora_is_refused(slice_spec):
    """A model with LoRA on its top layer only cannot give a depth-2 state."""
    # Arrange
    model, _ = load_base_model(slice_spec, seed=0)
    shallow = AdaptedModel(model, slice_spec, max_depth=1)

    # Act
    with pytest.raises(InvalidInputError) as caught:
        get_adapter_state(shallow, 2)

    # Assert
    assert str(caught.value) == "depth must be an integer in 1..1 (the layers that carry LoRA); got 2"


def test_states_of_different_depths_merge_layer_by_layer_and_load_back(adapted):
    """runtime.aggregation merges a depth-1 and a depth-2 state of ours; the result loads into the model."""
    # Arrange
    from hierfedlora.runtime.aggregation import layer_of as runtime_layer_of
    from hierfedlora.runtime.aggregation import merge_across_groups

    deep = initial_adapter_state(adapted, 2, seed=1)
    shallow = {k: v + 1.0 for k, v in initial_adapter_state(adapted, 1, seed=2).items()}

    # Act
    merged = merge_across_groups(deep, [deep, shallow], [1, 3])
    set_adapter_state(adapted, merged)

    # Assert
    assert [runtime_layer_of(k) for k in deep] == [layer_of(k) for k in deep]
    key0, key1 = "layers.0.attention.self.query.lora_A", "layers.1.attention.self.value.lora_B"
    assert torch.equal(get_adapter_state(adapted, 2)[key0], deep[key0])  # only the deep group trained layer 0
    assert torch.allclose(get_adapter_state(adapted, 2)[key1], 0.25 * deep[key1] + 0.75 * shallow[key1])
