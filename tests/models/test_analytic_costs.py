"""The analytic cost model (planner.analytic_costs) against measured ones: bytes exactly, times within the
documented tolerance (README, "Cost models you cannot profile")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hierfedlora.models.catalog import ModelSpec, resolve_model_dir
from hierfedlora.models.profiling import measure_cost_model
from hierfedlora.planner.analytic_costs import COMPUTE_TIERS, analytic_cost_model, model_shape
from hierfedlora.planner.io import read_json
from hierfedlora.planner.types import CostModel
from hierfedlora.validation.analytic_check import compare_cost_models

ROOT = Path(__file__).resolve().parents[2]
STEP_TOLERANCE = 0.5
"""Documented: on the reference host the analytic (C1) step is within +-50% of the measured one at every depth."""


def _analytic(folder: Path, measured: CostModel, labels: int) -> CostModel:
    config = json.loads((folder / "config.json").read_text())
    return analytic_cost_model(
        model_shape(config),
        COMPUTE_TIERS["reference-host"],
        batch_size=measured.batch_size,
        seq_len=measured.seq_len,
        lora_rank=measured.lora_rank,
        num_labels=labels,
    )


def test_the_packaged_model_steps_within_the_documented_tolerance_of_its_profile():
    """Against the profile measured on the 2-core host (docs/results/pilot): every depth's step within 50%,
    the adapter and head bytes exact, the frozen model within 0.1%, activations within 15%."""
    # Arrange
    measured = read_json(CostModel, ROOT / "docs" / "results" / "pilot" / "cost_model.json")
    # Act
    comparison = compare_cost_models(measured, _analytic(resolve_model_dir("default"), measured, 26))
    # Assert
    assert comparison.worst_step_error <= STEP_TOLERANCE
    assert comparison.adapter_bytes_error == 0 and comparison.head_bytes_error == 0
    assert abs(comparison.base_model_bytes_error) <= 0.001
    assert abs(comparison.activation_bytes_error) <= 0.15


@pytest.mark.filterwarnings("ignore::hierfedlora.planner.errors.HierFedLoraWarning")  # timings: not tested here
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_tiny_decoders_have_the_profiled_bytes(make_decoder_dir, kind):
    """For the tiny GPT-2 (c_attn) and LLaMA (q_proj/v_proj, grouped-query attention) test models, the LoRA
    and head bytes equal the profile's exactly and the frozen model's within 1%."""
    # Arrange
    folder = make_decoder_dir(kind)
    measured = measure_cost_model(ModelSpec(path=str(folder), num_labels=4), batch_size=2, seq_len=8, repeats=1)
    # Act
    comparison = compare_cost_models(measured, _analytic(folder, measured, 4))
    # Assert
    assert comparison.adapter_bytes_error == 0 and comparison.head_bytes_error == 0
    assert abs(comparison.base_model_bytes_error) <= 0.01
