"""Experiments on any data: the preset's data set reaches the fleets, the cost model's head and the report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleets.data_sources import JANEAUSTEN_DATA_PATH
from hierfedlora.validation.baselines import BaselineSettings
from hierfedlora.validation.experiments import PRESETS, ExperimentPreset, head_for, run_experiment
from tests.factories import make_cost_model


def test_preset_data_defaults_to_wordnet_and_is_checked():
    """Presets read ``wordnet`` unless told otherwise; an empty data name is refused by field."""
    with pytest.raises(InvalidInputError) as caught:
        dataclasses.replace(PRESETS["quick"], data="")
    assert PRESETS["paper"].data == "wordnet"
    assert [i.path for i in caught.value.issues] == ["data"]


def test_head_for_resizes_a_profiled_head_only_when_the_class_count_differs():
    """26-class profile, 6-class data: the head shrinks by 6/26; matching or unknown counts stay."""
    # Arrange
    profiled = dataclasses.replace(make_cost_model(6), num_labels=26)
    # Act
    six = head_for(profiled, 6)
    # Assert
    assert six.num_labels == 6 and six.head_bytes < profiled.head_bytes
    assert head_for(profiled, 26) is profiled and head_for(make_cost_model(6), 6).num_labels is None


def _tiny(preset: ExperimentPreset, data: str) -> ExperimentPreset:
    return dataclasses.replace(
        preset,
        data=data,
        fleet_sizes=(6,),
        num_groups=2,
        alphas=(0.5,),
        seeds=(0,),
        single_seed_alphas=(),
        samples_per_device=4,
        local_steps=1,
        batch_size=4,
        max_seq_len=8,
        eval_samples=8,
        budget_fedlora_rounds=1.0,
        max_rounds=1,
        plan_time_limit_s=1.0,
        baseline=BaselineSettings(uniform_intra_rounds=2),
    )


@pytest.mark.slow
@pytest.mark.skipif(not Path(f"{JANEAUSTEN_DATA_PATH}.rdx").exists(), reason="r-cran-janeaustenr is not installed")
def test_paper_methods_run_on_janeausten_and_the_report_describes_it(tmp_path):
    """The paper preset's five methods, at tiny sizes, on the second data set: every run finishes, the
    cost model's head has its 6 classes, and the report states the data set, its majority and chance."""
    # Arrange
    preset = _tiny(PRESETS["paper"], "janeausten")
    profiled = dataclasses.replace(make_cost_model(6), num_labels=26)
    # Act
    results = run_experiment(preset, tmp_path, cost_model=profiled)
    # Assert
    report = (tmp_path / "report.md").read_text()
    assert sorted(r.method for r in results) == sorted(PRESETS["paper"].methods)
    assert all(r.rounds == 1 and 0 <= r.final_accuracy <= 1 for r in results)
    assert json.loads((tmp_path / "cost_model.json").read_text())["num_labels"] == 6
    assert json.loads((tmp_path / "data.json").read_text())["num_classes"] == 6
    assert "Jane Austen" in report and "majority class `Emma` 23.3%, chance 16.7%" in report
    assert "WordNet" not in report
    fleet = json.loads((tmp_path / "runs" / "alpha_0.5_seed0" / "fleet.json").read_text())
    assert fleet["dataset"]["kind"] == "janeausten" and len(fleet["class_names"]) == 6
