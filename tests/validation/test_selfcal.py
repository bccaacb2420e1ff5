"""Self-calibration: a weak prior lets a probe round move the constants; the CLI runs it and leaves the fit."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.feedback import Replanner
from hierfedlora.planner.io import read_json, write_json
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.refit import TARGET_GAP_FRACTION, plan_progress
from hierfedlora.planner.types import ConvergenceParams, PlanningProblem, SolverOptions
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.validation.selfcal import FITTED_NAME, self_calibrating_replanner
from tests.factories import make_cost_model, make_devices, make_round_report, make_two_group_plan
from tests.runtime.conftest import build_small_fleet

HAND_SET = ConvergenceParams(depth_exponent=0.5, skew_sensitivity=4.0, reference_rounds=30.0)


def _model_reports(problem, plans, truth):
    """Round reports whose eval losses follow the convergence model with constants ``truth`` (noise-free)."""
    counts = {d.device_id: d.label_counts for d in problem.devices}
    top = math.log(len(problem.devices[0].label_counts))
    progress, reports = 0.0, []
    for r, plan in enumerate(plans, start=1):
        progress += plan_progress(plan, counts, problem.cost_model.num_layers, truth)
        loss = top * TARGET_GAP_FRACTION ** (progress / truth.reference_rounds)
        reports.append(make_round_report(plan, r, eval_loss=loss))
    return reports


def test_weak_prior_lets_the_probe_round_move_beta_toward_the_truth():
    """Losses made with beta 0.9 from a prior at 0.5: after the probe, the weak-prior (0.01) refit lands nearer
    0.9 than the same loop with the prior at full weight (1)."""
    # Arrange
    problem = PlanningProblem(
        devices=make_devices(12), cost_model=make_cost_model(), num_groups=3, convergence=HAND_SET,
        solver=SolverOptions(seed=0, time_limit_s=2.0),
    )  # fmt: skip
    plan = make_plan(problem)
    truth = dataclasses.replace(HAND_SET, depth_exponent=0.9)
    fits = {}
    for weight in (0.01, 1.0):
        loop = self_calibrating_replanner(
            problem, num_groups=3, every_rounds=100, probe_after_round=2, probe_groups=1, prior_weight=weight, seed=0
        )
        first = _model_reports(problem, [plan, plan], truth)
        probe = loop(plan, first)
        reports = _model_reports(problem, [plan, plan, probe], truth)
        # Act
        loop(probe, reports, {plan.plan_id: plan})
        fits[weight] = loop.decisions[-1].fit.params.depth_exponent
    # Assert
    assert probe.solver == "probe"
    assert abs(fits[0.01] - 0.9) < abs(fits[1.0] - 0.9)


@pytest.mark.parametrize("weight", [-1.0, math.nan, "low"])
def test_replanner_refuses_a_bad_prior_weight(weight):
    """prior_weight must be a finite number >= 0, named in the issue."""
    # Arrange
    problem = PlanningProblem(devices=make_devices(4), cost_model=make_cost_model(), num_groups=2)
    # Act
    with pytest.raises(InvalidInputError) as caught:
        Replanner(problem, every_rounds=1, prior_weight=weight)
    # Assert
    assert [issue.path for issue in caught.value.issues] == ["prior_weight"]


@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory: pytest.TempPathFactory):
    """Four devices over a 3-class CSV (the runtime tests' fleet)."""
    return build_small_fleet(tmp_path_factory.mktemp("selfcal-data"), 4)


def _cli(tmp_path, small_fleet, model_dir, *extra):
    fleet, fleet_path = small_fleet
    plan_path, cost_path, prior_path = tmp_path / "plan.json", tmp_path / "cost.json", tmp_path / "prior.json"
    write_json(plan_path, make_two_group_plan(fleet))
    write_json(cost_path, make_cost_model(2))
    write_json(prior_path, HAND_SET)
    return [
        sys.executable, "-m", "hierfedlora.cli", "run", str(plan_path), "--fleet", str(fleet_path),
        "--cost-model", str(cost_path), "--rounds", "3", "--out", str(tmp_path / "run"), "--model", str(model_dir),
        "--eval-samples", "16", "--seed", "3", "--allow-cost-mismatch", "--self-calibrate",
        "--convergence", str(prior_path), *extra,
    ]  # fmt: skip


def test_cli_self_calibrates_with_a_probe_round_and_writes_the_fit(tmp_path, small_fleet, minilm_slice_dir):
    """`run --self-calibrate --probe-after 1`: round 2 runs the probe plan, round 3 does not; the fit is written."""
    # Arrange
    command = _cli(tmp_path, small_fleet, minilm_slice_dir, "--probe-after", "1", "--probe-groups", "1")
    # Act
    done = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    plans = {p.plan_id: p for p in (read_json(Plan, path) for path in (run / "plans").glob("*.json"))}
    solvers = [plans[r.plan_id].solver for r in read_reports(run / REPORTS_NAME)]
    assert solvers[0] != "probe" and solvers[1] == "probe" and solvers[2] != "probe"
    fitted = read_json(ConvergenceParams, run / FITTED_NAME)
    assert fitted != HAND_SET
    assert "self-calibrated: beta" in done.stdout


def test_cli_refuses_a_bad_probe_round_before_training(tmp_path, small_fleet, minilm_slice_dir):
    """`--probe-after 0` exits 2 naming the flag and writes no run folder."""
    # Arrange
    command = _cli(tmp_path, small_fleet, minilm_slice_dir, "--probe-after", "0")
    # Act
    done = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert done.returncode == 2 and "--probe-after" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_problem_convergence_that_is_not_an_object(tmp_path, small_fleet, minilm_slice_dir):
    """`--problem` with `"convergence": 3` beside `--convergence` exits 2 naming convergence; no run folder."""
    # Arrange
    problem_path = tmp_path / "problem.json"
    problem_path.write_text('{"convergence": 3}')
    command = _cli(tmp_path, small_fleet, minilm_slice_dir, "--problem", str(problem_path))
    # Act
    done = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert done.returncode == 2 and "convergence" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
