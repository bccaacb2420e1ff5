"""Profiling the real model: a valid CostModel with exact byte counts; bad sizes; the full default model."""

from __future__ import annotations

import warnings

import pytest
import torch

from hierfedlora.models.catalog import ModelSpec, load_base_model, model_sha256
from hierfedlora.models.profiling import _check_full_step, measure_cost_model, measure_step_times_s
from hierfedlora.planner.costs import step_time_s
from hierfedlora.planner.errors import HierFedLoraWarning, InvalidInputError
from hierfedlora.planner.io import from_json, to_json
from hierfedlora.planner.types import CostModel
from tests.factories import make_cost_model

# Toy sizes: per-step Python overhead dwarfs the layers, so the full-step self-check may warn; that is not news here.
TOY_SELF_CHECK = pytest.mark.filterwarnings("ignore::hierfedlora.planner.errors.HierFedLoraWarning")


@TOY_SELF_CHECK
def test_profiling_the_slice_gives_a_valid_cost_model(slice_spec, minilm_slice_dir):
    """Two layers of timings, positive, and byte counts that match the model's tensors exactly."""
    # Arrange
    model, _ = load_base_model(slice_spec, seed=0)
    base_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()

    # Act
    cost = measure_cost_model(slice_spec, batch_size=4, seq_len=16, repeats=1, seed=0)

    # Assert
    assert (cost.num_layers, cost.batch_size, cost.seq_len, cost.lora_rank) == (2, 4, 16, 8)
    assert len(cost.layer_forward_s) == len(cost.layer_backward_s) == 2
    assert cost.adapter_bytes_per_layer == 2 * (8 * 384 + 384 * 8) * 4
    assert cost.head_bytes == (4 * 384 + 4) * 4
    assert cost.optimizer_bytes_per_layer == 3 * cost.adapter_bytes_per_layer
    assert cost.base_model_bytes == base_bytes
    assert cost.activation_bytes_per_sample_per_layer > 16 * 384 * 4  # at least the layer's input
    assert cost.model_sha256 == model_sha256(minilm_slice_dir)
    assert cost.model_name == minilm_slice_dir.name
    assert torch.__version__ in cost.measured_on
    assert from_json(CostModel, to_json(cost)) == cost
    assert step_time_s(cost, compute_scale=1.0, depth=2, batch_size=4) > step_time_s(
        cost, compute_scale=1.0, depth=1, batch_size=4
    )
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before


@TOY_SELF_CHECK
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_profiling_works_on_decoders(make_decoder_dir, kind):
    """The per-layer capture is architecture-free: GPT-2 and LLaMA layers profile too."""
    # Arrange
    spec = ModelSpec(path=str(make_decoder_dir(kind)), num_labels=3)

    # Act
    cost = measure_cost_model(spec, batch_size=2, seq_len=8, repeats=1)

    # Assert
    assert cost.num_layers == 2
    assert all(t > 0 for t in cost.layer_forward_s + cost.layer_backward_s)
    assert cost.head_bytes == 3 * 32 * 4  # GPT-2 and LLaMA score heads have no bias


def test_step_times_are_measured_per_depth(slice_spec):
    """measure_step_times_s gives one positive time per requested depth."""
    # Act
    times = measure_step_times_s(slice_spec, [1, 2], batch_size=2, seq_len=8, repeats=1)

    # Assert
    assert sorted(times) == [1, 2]
    assert all(t > 0 for t in times.values())


@pytest.mark.parametrize(("factor", "warns"), [(1.0, False), (1.2, False), (1.5, True), (0.5, True)])
def test_self_check_warns_when_the_full_step_disagrees(factor, warns):
    """A full-depth step more than 25% away from (C1)'s prediction raises a HierFedLoraWarning."""
    # Arrange
    cost = make_cost_model()
    predicted = step_time_s(cost, compute_scale=1.0, depth=cost.num_layers, batch_size=cost.batch_size)

    # Act
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check_full_step(cost, predicted * factor)

    # Assert
    assert [issubclass(w.category, HierFedLoraWarning) for w in caught] == ([True] if warns else [])


def test_bad_sizes_are_reported_together(slice_spec):
    """batch_size, seq_len and repeats below 1 give three issues in one error, before any model loads."""
    # Act
    with pytest.raises(InvalidInputError) as caught:
        measure_cost_model(slice_spec, batch_size=0, seq_len=-1, repeats=0)

    # Assert
    assert [issue.path for issue in caught.value.issues] == ["batch_size", "seq_len", "repeats"]


def test_sequences_longer_than_the_model_allows_are_refused(slice_spec):
    """A seq_len beyond the model's 512 positions is refused with the field ``seq_len``."""
    # Act
    with pytest.raises(InvalidInputError) as caught:
        measure_cost_model(slice_spec, batch_size=1, seq_len=513, repeats=1)

    # Assert
    assert str(caught.value) == "seq_len must be an integer in 1..512 (the model's positions); got 513"


def test_step_times_refuse_a_depth_beyond_the_layers(slice_spec):
    """Depth 3 of a 2-layer model is refused with the field ``depth``."""
    # Act
    with pytest.raises(InvalidInputError) as caught:
        measure_step_times_s(slice_spec, [3], batch_size=1, seq_len=4, repeats=1)

    # Assert
    assert caught.value.issues[0].path == "depth"


@pytest.mark.slow
def test_profiling_the_default_model():
    """The packaged 6-layer model profiles at batch 16 x 64 tokens into a valid cost model."""
    # Arrange
    spec = ModelSpec(num_labels=26)

    # Act
    cost = measure_cost_model(spec, batch_size=16, seq_len=64, repeats=3)

    # Assert
    assert (cost.model_name, cost.num_layers) == ("all-MiniLM-L6-v2", 6)
    assert cost.adapter_bytes_per_layer == 49_152  # 2 modules x (8 x 384 + 384 x 8) x 4 bytes
    assert cost.head_bytes == 40_040  # (26 x 384 + 26) x 4 bytes
    assert cost.base_model_bytes > 90_000_000  # 22.7M fp32 parameters
    assert cost.model_sha256 == model_sha256("default")
    assert all(t > 0 for t in cost.layer_forward_s + cost.layer_backward_s)
