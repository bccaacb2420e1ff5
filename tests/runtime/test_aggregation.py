"""FedAvg inside groups and the layer-wise merge across groups: known answers, properties, errors."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.runtime import aggregation
from hierfedlora.runtime.aggregation import (
    AdapterState,
    Aggregator,
    LayerwiseAggregator,
    fedavg,
    layer_of,
    merge_across_groups,
    merge_weights,
)

MODULES = ("query", "value")
RANK, HIDDEN, CLASSES = 2, 3, 2


def _keys(num_layers: int, depth: int) -> list[str]:
    layer_keys = [
        f"layers.{layer}.{module}.lora_{factor}"
        for layer in range(num_layers - depth, num_layers)
        for module in MODULES
        for factor in ("A", "B")
    ]
    return [*layer_keys, "head.weight", "head.bias"]


def _shape(key: str) -> tuple[int, ...]:
    if key.endswith("lora_A"):
        return (RANK, HIDDEN)
    if key.endswith("lora_B"):
        return (HIDDEN, RANK)
    return (CLASSES, HIDDEN) if key.endswith("weight") else (CLASSES,)


def random_state(num_layers: int, depth: int, generator: torch.Generator) -> AdapterState:
    """A depth-``depth`` adapter state of small random float32 tensors."""
    return {key: torch.randn(_shape(key), generator=generator) for key in _keys(num_layers, depth)}


def constant_state(num_layers: int, depth: int, value: float) -> AdapterState:
    return {key: torch.full(_shape(key), value) for key in _keys(num_layers, depth)}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A global state and groups of random depths with sample-count weights."""

    global_state: AdapterState
    group_states: tuple[AdapterState, ...]
    weights: tuple[float, ...]
    depths: tuple[int, ...]


@st.composite
def scenarios(draw: st.DrawFn, equal_depths: bool = False) -> Scenario:
    num_layers = draw(st.integers(1, 4))
    num_groups = draw(st.integers(1, 4))
    if equal_depths:
        depths = (draw(st.integers(1, num_layers)),) * num_groups
    else:
        depths = tuple(draw(st.lists(st.integers(1, num_layers), min_size=num_groups, max_size=num_groups)))
    weight = st.integers(1, 10_000) | st.floats(0.01, 1e4, allow_nan=False, allow_infinity=False)
    weights = tuple(draw(st.lists(weight, min_size=num_groups, max_size=num_groups)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    global_state = random_state(num_layers, num_layers, generator)
    groups = tuple(random_state(num_layers, d, generator) for d in depths)
    return Scenario(global_state, groups, weights, depths)


PROPERTY = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------- known answers


def test_fedavg_known_answer():
    """Sample counts 1 and 3 weight values 0 and 4 to 3, key by key."""
    # Arrange
    states = [constant_state(2, 1, 0.0), constant_state(2, 1, 4.0)]
    # Act
    averaged = fedavg(states, [1, 3])
    # Assert
    assert list(averaged) == _keys(2, 1)
    assert all(torch.equal(t, torch.full(_shape(k), 3.0)) for k, t in averaged.items())


def test_merge_known_answer_by_hand():
    """Three layers; groups of depth 3, 2, 1 with 1, 2, 5 samples and values 1, 2, 3.

    layer 0: only group 0 trains it            -> 1
    layer 1: groups 0, 1: (1*1 + 2*2) / 3       -> 5/3
    layer 2 and head: (1*1 + 2*2 + 5*3) / 8     -> 2.5
    """
    # Arrange
    global_state = constant_state(3, 3, -7.0)
    groups = [constant_state(3, 3, 1.0), constant_state(3, 2, 2.0), constant_state(3, 1, 3.0)]
    # Act
    merged = merge_across_groups(global_state, groups, [1, 2, 5])
    # Assert
    expected = {0: 1.0, 1: 5.0 / 3.0, 2: 2.5, None: 2.5}
    for key, tensor in merged.items():
        torch.testing.assert_close(tensor, torch.full(_shape(key), expected[layer_of(key)]), rtol=0, atol=1e-6)


def test_merge_with_no_groups_returns_a_copy_of_the_global_state():
    """With no group states every key is untouched: the result equals the global state and shares no memory."""
    # Arrange
    global_state = constant_state(2, 2, 1.5)
    # Act
    merged = merge_across_groups(global_state, [], [])
    # Assert
    assert all(torch.equal(merged[k], v) and merged[k].data_ptr() != v.data_ptr() for k, v in global_state.items())


def test_lora_factors_are_averaged_separately():
    """fedavg averages A and B on their own: the merged product is mean(B) @ mean(A), not mean(B @ A)."""
    # Arrange
    a = {"layers.0.q.lora_A": torch.tensor([[1.0, 0.0]]), "layers.0.q.lora_B": torch.tensor([[1.0], [0.0]])}
    b = {"layers.0.q.lora_A": torch.tensor([[0.0, 1.0]]), "layers.0.q.lora_B": torch.tensor([[0.0], [1.0]])}
    # Act
    merged = fedavg([a, b], [1, 1])
    # Assert
    product_of_means = merged["layers.0.q.lora_B"] @ merged["layers.0.q.lora_A"]
    mean_of_products = (
        a["layers.0.q.lora_B"] @ a["layers.0.q.lora_A"] + b["layers.0.q.lora_B"] @ b["layers.0.q.lora_A"]
    ) / 2
    torch.testing.assert_close(product_of_means, torch.full((2, 2), 0.25))
    torch.testing.assert_close(mean_of_products, torch.eye(2) / 2)


def test_merged_values_take_the_global_dtype():
    """A group holding bfloat16 tensors still yields the global state's float32."""
    # Arrange
    global_state = constant_state(1, 1, 0.0)
    group = {k: v.to(torch.bfloat16) + 1 for k, v in global_state.items()}
    # Act
    merged = merge_across_groups(global_state, [group], [4])
    # Assert
    assert {t.dtype for t in merged.values()} == {torch.float32}


# ---------------------------------------------------------------- properties


@PROPERTY
@given(scenarios(equal_depths=True))
def test_equal_depth_merge_equals_fedavg(case: Scenario):
    """When every group has the same depth the merge is plain FedAvg on trained keys, bit for bit."""
    # Act
    merged = merge_across_groups(case.global_state, case.group_states, case.weights)
    averaged = fedavg(case.group_states, case.weights)
    # Assert
    for key, value in merged.items():
        assert torch.equal(value, averaged[key] if key in averaged else case.global_state[key])


@PROPERTY
@given(scenarios())
def test_key_trained_by_one_group_equals_that_groups_value(case: Scenario):
    """A key exactly one group holds takes that group's tensor exactly."""
    # Act
    merged = merge_across_groups(case.global_state, case.group_states, case.weights)
    # Assert
    for key in merged:
        holders = [state for state in case.group_states if key in state]
        if len(holders) == 1:
            assert torch.equal(merged[key], holders[0][key])


@PROPERTY
@given(scenarios())
def test_untouched_keys_keep_the_global_value(case: Scenario):
    """Keys no group holds equal the global value; the result holds exactly the global keys, in order."""
    # Arrange
    before = {k: v.clone() for k, v in case.global_state.items()}
    # Act
    merged = merge_across_groups(case.global_state, case.group_states, case.weights)
    # Assert
    assert list(merged) == list(case.global_state)
    trained = set().union(*case.group_states) if case.group_states else set()
    for key in set(merged) - trained:
        assert torch.equal(merged[key], before[key])
        assert merged[key].data_ptr() != case.global_state[key].data_ptr()
    assert all(torch.equal(case.global_state[k], v) for k, v in before.items())  # input untouched


@PROPERTY
@given(scenarios())
def test_effective_weights_sum_to_one_per_key(case: Scenario):
    """Per trained key, holders get positive weights summing to one and the other groups zero."""
    # Act
    weights = merge_weights(case.global_state, case.group_states, case.weights)
    # Assert
    assert set(weights) == set().union(*case.group_states)
    for key, per_group in weights.items():
        assert math.isclose(math.fsum(per_group), 1.0, rel_tol=0, abs_tol=1e-12)
        assert all((w > 0) == (key in state) for w, state in zip(per_group, case.group_states, strict=True))


@PROPERTY
@given(scenarios(), st.randoms(use_true_random=False))
def test_merge_is_invariant_to_group_order(case: Scenario, random):
    """Shuffling groups (with their weights) permutes the effective weights exactly and keeps the merge."""
    # Arrange
    order = list(range(len(case.group_states)))
    random.shuffle(order)
    shuffled = [case.group_states[k] for k in order]
    shuffled_weights = [case.weights[k] for k in order]
    # Act
    merged = merge_across_groups(case.global_state, case.group_states, case.weights)
    merged_shuffled = merge_across_groups(case.global_state, shuffled, shuffled_weights)
    weights = merge_weights(case.global_state, case.group_states, case.weights)
    weights_shuffled = merge_weights(case.global_state, shuffled, shuffled_weights)
    # Assert
    for key in merged:
        torch.testing.assert_close(merged_shuffled[key], merged[key], rtol=1e-6, atol=1e-6)
    for key, per_group in weights.items():
        assert weights_shuffled[key] == tuple(per_group[k] for k in order)


@PROPERTY
@given(scenarios(), st.integers(1, 5))
def test_fedavg_of_identical_states_is_the_identity(case: Scenario, copies: int):
    """Averaging copies of one float32 state returns it bit for bit, whatever the weights."""
    # Arrange
    state = case.group_states[0]
    weights = [case.weights[0] * (k + 1) for k in range(copies)]
    # Act
    averaged = fedavg([state] * copies, weights)
    # Assert
    assert list(averaged) == list(state)
    assert all(torch.equal(averaged[k], v) for k, v in state.items())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "3", None])
def test_fedavg_refuses_a_bad_weight(bad):
    """A weight that is not a finite number > 0 is reported under its position."""
    # Arrange
    states = [constant_state(1, 1, 0.0), constant_state(1, 1, 1.0)]
    # Act
    with pytest.raises(InvalidInputError) as info:
        fedavg(states, [2, bad])
    # Assert
    assert [issue.path for issue in info.value.issues] == ["weights[1]"]


def test_fedavg_names_a_missing_key_and_a_shape_mismatch():
    """A state lacking a key names the key; a differing shape names the key and both shapes."""
    # Arrange
    states = [constant_state(2, 1, 0.0), constant_state(2, 1, 1.0), constant_state(2, 1, 2.0)]
    del states[1]["layers.1.value.lora_B"]
    states[2]["head.bias"] = torch.zeros(5)
    # Act
    with pytest.raises(InvalidInputError) as info:
        fedavg(states, [1, 1, 1])
    # Assert
    assert [issue.path for issue in info.value.issues] == ["states[1]", "states[2]['head.bias']"]
    assert "'layers.1.value.lora_B'" in str(info.value)
    assert "shape (2,)" in str(info.value) and "got (5,)" in str(info.value)


def test_fedavg_reports_three_problems_at_once():
    """A weight count mismatch, an integer tensor and a key outside the contract come out together."""
    # Arrange
    state = {"layers.0.q.lora_A": torch.zeros(2, dtype=torch.int64), "encoder.bias": torch.zeros(2)}
    # Act
    with pytest.raises(InvalidInputError) as info:
        fedavg([state], [1, 2])
    # Assert
    assert [issue.path for issue in info.value.issues] == ["weights", "states[0]['layers.0.q.lora_A']", "states[0]"]


def test_a_value_that_is_not_a_tensor_is_reported_not_crashed_on():
    """A list where a tensor should be is an issue in the first state and in the global state alike."""
    # Arrange
    broken = {"layers.0.q.lora_A": [1.0, 2.0]}
    good = {"layers.0.q.lora_A": torch.zeros(2)}
    # Act
    with pytest.raises(InvalidInputError) as in_fedavg:
        fedavg([broken, good], [1, 1])
    with pytest.raises(InvalidInputError) as in_merge:
        merge_across_groups(broken, [good], [1])
    # Assert
    assert [i.path for i in in_fedavg.value.issues] == ["states[0]['layers.0.q.lora_A']"]
    assert [i.path for i in in_merge.value.issues] == ["global_state['layers.0.q.lora_A']"]


def test_fedavg_refuses_no_states():
    """An average of nothing is refused."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        fedavg([], [])
    # Assert
    assert info.value.issues[0].path == "states"


def test_merge_names_a_key_the_global_state_lacks_and_a_shape_mismatch():
    """Group keys must be global keys with the global shapes; every problem is named."""
    # Arrange
    global_state = constant_state(2, 1, 0.0)
    deep = constant_state(2, 2, 1.0)
    shallow = constant_state(2, 1, 1.0)
    shallow["head.weight"] = torch.zeros(CLASSES, HIDDEN + 1)
    # Act
    with pytest.raises(InvalidInputError) as info:
        merge_across_groups(global_state, [deep, shallow], [1, 2, 3])
    # Assert
    assert [issue.path for issue in info.value.issues] == [
        "weights",
        "group_states[0]",
        "group_states[1]['head.weight']",
    ]
    assert "'layers.0.query.lora_A'" in str(info.value)


@pytest.mark.parametrize("bad", ["layers.x.q.lora_A", "layers.3", "head.", "encoder.layer.0", "", 7])
def test_layer_of_refuses_keys_outside_the_contract(bad):
    """Only ``layers.{l}.<...>`` and ``head.<...>`` keys are adapter keys."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        layer_of(bad)
    # Assert
    assert info.value.issues[0].got == bad


# ---------------------------------------------------------------- protocol and docs


def test_default_aggregator_satisfies_the_protocol_and_delegates():
    """LayerwiseAggregator is an Aggregator and gives the module functions' results."""
    # Arrange
    aggregator = LayerwiseAggregator()
    global_state, group = constant_state(2, 2, 0.0), constant_state(2, 1, 3.0)
    # Act
    merged = aggregator.merge_across_groups(global_state, [group], [2])
    averaged = aggregator.fedavg([group, group], [1, 2])
    # Assert
    assert isinstance(aggregator, Aggregator)
    assert all(torch.equal(merged[k], v) for k, v in merge_across_groups(global_state, [group], [2]).items())
    assert all(torch.equal(averaged[k], v) for k, v in group.items())


def test_docstring_examples_run():
    """The module's doctests pass."""
    # Act
    result = doctest.testmod(aggregation, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    # Assert
    assert result.failed == 0 and result.attempted > 0
