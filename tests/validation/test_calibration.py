"""validation.calibration: run folders read back into histories; bad folders named; the CLI's errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import pytest

from hierfedlora.planner.errors import HierFedLoraWarning, InvalidInputError
from hierfedlora.planner.io import to_json, write_json
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.types import ConvergenceParams
from hierfedlora.runtime.checkpoint import REPORTS_NAME
from hierfedlora.runtime.engine import PLANS_FOLDER
from hierfedlora.validation.calibration import CalibrationRun, calibrate, read_run_history
from tests.factories import make_round_report
from tests.planner.cases import toy_problem


def _run_folder(tmp_path, plans_and_rounds: list[tuple[Plan, int]], *, save_plans: bool = True):
    """A run folder as the runtime leaves it: plans/<id>.json and one report line per round."""
    run_dir = tmp_path / "run"
    (run_dir / PLANS_FOLDER).mkdir(parents=True)
    lines, global_round = [], 0
    for plan, rounds in plans_and_rounds:
        if save_plans:
            write_json(run_dir / PLANS_FOLDER / f"{plan.plan_id}.json", plan)
        for _ in range(rounds):
            global_round += 1
            lines.append(to_json(make_round_report(plan, global_round, eval_loss=1.0 / global_round)).replace("\n", ""))
    (run_dir / REPORTS_NAME).write_text("".join(line + "\n" for line in lines))
    return run_dir


@pytest.fixture(scope="module")
def two_plans():
    """The toy problem, its plan, and its plan with every group at depth 1."""
    problem = toy_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierFedLoraWarning)  # a single depth choice is suspicious on purpose
        return problem, make_plan(problem), make_plan(dataclasses.replace(problem, depth_choices=(1,)))


def test_a_run_folder_reads_back_as_its_plans_in_order(tmp_path, two_plans):
    """Reports of a re-planned run come back grouped under the plan each ran under."""
    # Arrange
    _, first, second = two_plans
    run_dir = _run_folder(tmp_path, [(first, 2), (second, 3)])
    # Act
    history = read_run_history(run_dir)
    # Assert
    assert [(plan.plan_id, [r.global_round for r in reports]) for plan, reports in history] == [
        (first.plan_id, [1, 2]),
        (second.plan_id, [3, 4, 5]),
    ]


def test_a_report_whose_plan_is_missing_is_named(tmp_path, two_plans):
    """A run folder without its plans/ files is refused, naming the report and the plan id."""
    # Arrange
    _, first, _ = two_plans
    run_dir = _run_folder(tmp_path, [(first, 2)], save_plans=False)
    # Act
    with pytest.raises(InvalidInputError) as error:
        read_run_history(run_dir)
    # Assert
    assert [(i.path, i.got) for i in error.value.issues] == [
        ("reports[0].plan_id", first.plan_id),
        ("reports[1].plan_id", first.plan_id),
    ]


def test_calibration_pools_runs_and_counts_their_rounds(tmp_path, two_plans):
    """Two runs pooled: every round is a point, each run is named with its rounds."""
    # Arrange
    problem, first, second = two_plans
    runs = [
        CalibrationRun("a", read_run_history(_run_folder(tmp_path / "a", [(first, 3)])), problem),
        CalibrationRun("b", read_run_history(_run_folder(tmp_path / "b", [(second, 2)])), problem),
    ]
    # Act
    result = calibrate(runs, prior=ConvergenceParams())
    # Assert
    assert result.names == ("a", "b") and result.rounds == (3, 2)
    assert result.fit.num_points == 5 and result.fit.params != ConvergenceParams()


def test_calibrate_cli_refuses_a_folder_that_is_no_experiment(tmp_path):
    """A folder without preset.json and cost_model.json exits 2 naming both; nothing is written."""
    # Arrange
    out = tmp_path / "convergence.json"
    command = [sys.executable, "-m", "hierfedlora.cli", "calibrate", str(tmp_path), "--out", str(out)]
    # Act
    result = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert result.returncode == 2
    assert "experiment_dir" in result.stderr and "no preset.json or cost_model.json in" in result.stderr
    assert not out.exists()
