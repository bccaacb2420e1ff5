"""``hierfedlora plan``: the network, target and --set/--convergence settings reach the problem; a mismatched
head is refused naming the field."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from hierfedlora.planner.fleet import save_fleet
from hierfedlora.planner.io import write_json
from hierfedlora.planner.types import ConvergenceParams, Fleet
from tests.factories import make_cost_model, make_devices


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hierfedlora.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan-settings")
    save_fleet(folder / "fleet.json", Fleet(devices=make_devices(8), class_names=("a", "b", "c", "d")))
    write_json(folder / "cost.json", make_cost_model())
    write_json(folder / "cost26.json", dataclasses.replace(make_cost_model(), num_labels=26))
    write_json(folder / "convergence.json", ConvergenceParams(reference_rounds=100.0))
    return folder


def _plan(inputs, *extra: str) -> dict:
    out = inputs / "plan.json"
    result = _cli("plan", str(inputs / "fleet.json"), "--cost-model", str(inputs / "cost.json"), "--groups", "2",
                  "--out", str(out), *extra)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def test_settings_change_the_plan_as_the_model_says(inputs):
    """A 1% target doubles the rounds; --convergence with R0 100 scales them; a slow server link lengthens rounds."""
    # Act
    base = _plan(inputs)
    tight = _plan(inputs, "--target-loss-gap", "0.01")
    calibrated = _plan(inputs, "--convergence", str(inputs / "convergence.json"))
    slow = _plan(inputs, "--set", "server_ingress_mbps=0.01", "--set", "solver.seed=1")
    # Assert
    assert tight["predicted_rounds_to_target"] == pytest.approx(2 * base["predicted_rounds_to_target"])
    assert "0.01" in tight["target"]
    assert calibrated["predicted_rounds_to_target"] > base["predicted_rounds_to_target"]
    assert slow["predicted_round_time_s"] > base["predicted_round_time_s"] and slow["seed"] == 1


def test_a_cost_model_for_other_classes_exits_2_naming_num_labels(inputs):
    """A 26-class head on a 4-class fleet is refused with the field, both counts and the fix."""
    result = _cli("plan", str(inputs / "fleet.json"), "--cost-model", str(inputs / "cost26.json"))
    assert result.returncode == 2
    assert "cost_model.num_labels must be the fleet's class count, 4" in result.stderr
    assert "got 26" in result.stderr and "with_num_labels" in result.stderr


def test_profile_analytic_prices_a_config_without_weights_and_refuses_an_unknown_tier(tmp_path):
    """--analytic on the packaged config writes a cost model with the measured model's bytes; --tier nope exits 2."""
    from hierfedlora.models.catalog import resolve_model_dir

    config = str(resolve_model_dir("default") / "config.json")
    out = tmp_path / "cost.json"
    # Act
    good = _cli("profile", "--analytic", config, "--num-labels", "4", "--tier", "phone-flagship", "--out", str(out))
    bad = _cli("profile", "--analytic", config, "--tier", "nope", "--out", str(tmp_path / "bad.json"))
    # Assert
    assert good.returncode == 0, good.stderr
    cost = json.loads(out.read_text())
    assert (cost["adapter_bytes_per_layer"], cost["head_bytes"], cost["num_labels"]) == (49152, 6160, 4)
    assert "phone-flagship" in cost["measured_on"]
    assert bad.returncode == 2 and "--tier must be one of" in bad.stderr and not (tmp_path / "bad.json").exists()


def test_plan_method_makes_a_baselines_plan(inputs):
    """`plan --method hierfavg --tau 2` writes HierFAVG's plan (tau 2 everywhere); the CLI's method list
    is the baselines' list."""
    from hierfedlora.commands.plan import METHOD_CHOICES
    from hierfedlora.validation.baselines import METHODS

    # Act
    plan = _plan(inputs, "--method", "hierfavg", "--tau", "2")
    # Assert
    assert plan["solver"] == "baseline:hierfavg" and {g["intra_rounds"] for g in plan["groups"]} == {2}
    assert sorted(METHOD_CHOICES) == sorted(METHODS)
