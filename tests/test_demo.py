"""``hierfedlora demo``: it plans with the calibrated constants and its HierFedLoRA plan uses the hierarchy
where the model says it pays, beside a flat FedLoRA plan of the same fleet (the run itself is CI's main job)."""

from __future__ import annotations

import dataclasses

from hierfedlora.commands.demo import METHODS, _uses_hierarchy
from hierfedlora.planner.types import ConvergenceParams, PlanningProblem, SolverOptions
from hierfedlora.validation.baselines import make_method_plan
from hierfedlora.validation.experiment_presets import PILOT_CALIBRATED
from tests.factories import make_cost_model, make_devices


def test_the_library_default_constants_are_the_calibrated_ones():
    """The demo's problem takes the default ConvergenceParams: they are the pilot-calibrated R0, beta and c."""
    default = ConvergenceParams()
    assert dataclasses.astuple(default) == dataclasses.astuple(PILOT_CALIBRATED)
    assert (default.reference_rounds, default.depth_exponent, default.skew_sensitivity) == (58.3, 0.108, 0.241)


def test_demo_plans_use_the_hierarchy_beside_flat_fedlora():
    """On a 12-device, 3-group problem the calibrated model puts some group below full depth or above one
    intra-group round; FedLoRA's plan is flat (one group, full depth, tau 1); the demo names both."""
    # Arrange
    cost = make_cost_model()
    problem = PlanningProblem(
        devices=make_devices(12), cost_model=cost, num_groups=3, solver=SolverOptions(seed=0, time_limit_s=2.0)
    )
    # Act
    plans = {method: make_method_plan(method, problem) for method in METHODS}
    # Assert
    assert METHODS == ("hierfedlora", "fedlora")
    assert _uses_hierarchy(plans["hierfedlora"], cost.num_layers).startswith("yes (group")
    assert _uses_hierarchy(plans["fedlora"], cost.num_layers).startswith("no")
    flat = plans["fedlora"].groups
    assert len(flat) == 1 and flat[0].depth == cost.num_layers and flat[0].intra_rounds == 1


def test_a_bad_budget_exits_2_before_anything_is_written(tmp_path):
    """`demo --budget-fedlora-rounds 0 --max-rounds 0`: both fields named on stderr, exit 2, no --out folder."""
    import subprocess
    import sys

    out = tmp_path / "demo"
    command = [sys.executable, "-m", "hierfedlora.cli", "demo", "--out", str(out), "--budget-fedlora-rounds", "0"]
    result = subprocess.run([*command, "--max-rounds", "0"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--budget-fedlora-rounds must be a number > 0" in result.stderr and "--max-rounds" in result.stderr
    assert not out.exists()
