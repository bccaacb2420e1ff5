"""Experiment methods under an aggregation rule (``method@rule``): parsed, checked, described, and preset."""

from __future__ import annotations

import dataclasses

import pytest

from hierfedlora.planner.costs import AGGREGATION_RULES
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.validation.experiment_outputs import _method_text
from hierfedlora.validation.experiment_presets import PRESETS, read_preset, split_method


@pytest.mark.parametrize("method", ["hierfedlora@fedx", "hierfedlora@", "hierfedlora@fedex@ffa", "fedgsq@ffa"])
def test_a_method_with_an_unknown_rule_or_name_is_refused(method):
    """An unknown rule, an empty one, two rules or an unknown method are all named under ``methods``."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        dataclasses.replace(PRESETS["quick"], methods=("fedlora", method))
    # Assert
    assert [issue.path for issue in info.value.issues] == ["methods"]
    assert method in str(info.value)


def test_split_method_and_descriptions_name_the_rule():
    """``name@rule`` splits into its parts, a bare name runs FedAvg, and the report line names the rule."""
    # Act
    parts = [split_method(m) for m in ("fedgsp", "hierfedlora@flora", "hierfedlora_loop@ffa")]
    # Assert
    assert parts == [("fedgsp", "fedavg"), ("hierfedlora", "flora"), ("hierfedlora_loop", "ffa")]
    assert _method_text("hierfedlora@flora", PRESETS["quick"]).endswith("aggregation rule `flora`")
    assert "aggregation rule" not in _method_text("hierfedlora", PRESETS["quick"])


def test_the_aggregation_presets_cover_every_rule():
    """The `aggregation` preset runs HierFedLoRA and FedLoRA under every rule and every other baseline at @best
    (HierFedLoRA's best rule); the small file every rule for both plans."""
    # Arrange
    from pathlib import Path

    small = read_preset(Path(__file__).parents[2] / "docs" / "presets" / "aggregation-small.json")
    # Act
    grid = {split_method(m) for m in PRESETS["aggregation"].methods}
    small_grid = {split_method(m) for m in small.methods}
    # Assert
    stage1 = {(m, rule) for m in ("fedlora", "hierfedlora") for rule in AGGREGATION_RULES}
    stage2 = {(m, "best") for m in ("hierfavg", "legend", "hetlora", "fedra", "fedgsp")}
    assert grid == stage1 | stage2
    assert PRESETS["aggregation"].alphas == (0.5, 0.1)
    assert stage1 <= small_grid
    assert ("fedgsp", "fedavg") in small_grid and small.fleet_sizes == (16,)
