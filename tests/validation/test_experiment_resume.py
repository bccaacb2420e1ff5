"""An experiment's run result counts every committed round exactly once, whatever the crash point."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

from hierfedlora.planner.io import read_json
from hierfedlora.runtime.checkpoint import CRASH_AFTER_COMMIT_ENV, MANIFEST_NAME, REPORTS_NAME, read_reports
from hierfedlora.validation.experiments import PRESETS, RunResult
from tests.runtime.test_engine import small_fleet  # noqa: F401

ROOT = Path(__file__).parents[2]


def one_run(out: str, fleet_path: str, model_dir: str) -> RunResult:
    """FedLoRA for 3 rounds on the 4-device fleet and the 2-layer model, through the experiment's own run step
    (the test and its crashing subprocess call this same code)."""
    from hierfedlora.planner.fleet import load_fleet
    from hierfedlora.runtime.engine import prepare_run
    from hierfedlora.runtime.options import RunOptions
    from hierfedlora.validation.baselines import make_method_plan
    from hierfedlora.validation.experiment_presets import Setting
    from hierfedlora.validation.experiments import _run_one, clock_devices_for, problem_for
    from tests.factories import make_cost_model

    preset = dataclasses.replace(
        PRESETS["quick"],
        fleet_sizes=(4,),
        num_groups=2,
        methods=("fedlora",),
        max_rounds=3,
        eval_samples=16,
        max_seq_len=16,
        batch_size=4,
    )
    fleet = load_fleet(fleet_path)
    setting = Setting(alpha=1.0, num_devices=4, tier_mix="paper", seed=0)
    problem = problem_for(preset, fleet, make_cost_model(2), seed=0)
    truth = clock_devices_for(fleet.devices, preset.speed_error_sigma, seed=0)
    reference = make_method_plan("fedlora", problem, settings=preset.baseline)
    options = RunOptions(rounds=1, model=model_dir, max_seq_len=16, eval_samples=16, seed=0)
    context = prepare_run(reference, fleet, options)
    return _run_one(preset, "fedlora", setting, problem, fleet, truth, 1e9, Path(out), context)


def _same(result: RunResult) -> RunResult:
    return dataclasses.replace(result, wall_time_s=0.0)


def test_experiment_crash_between_checkpoint_and_report_loses_no_round(tmp_path, small_fleet, minilm_slice_dir):  # noqa: F811
    """Round 2 committed, its report line not written, the process SIGKILLed (the fault hook), then the
    experiment run again: its result has all 3 rounds, equal to an uninterrupted run's. And the issue's
    repro: a finished run with result.json and the last report line deleted gives the same result again."""
    # Arrange
    _, fleet_path = small_fleet
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    expected = one_run(str(whole), str(fleet_path), str(minilm_slice_dir))
    code = "import sys; from tests.validation.test_experiment_resume import one_run; one_run(*sys.argv[1:])"
    env = {
        **os.environ,
        CRASH_AFTER_COMMIT_ENV: "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
    }
    # Act
    crashed = subprocess.run(
        [sys.executable, "-c", code, str(cut), str(fleet_path), str(minilm_slice_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    logged_at_crash = [r.global_round for r in read_reports(cut / "run" / REPORTS_NAME)]
    committed_at_crash = '"global_round": 2' in (cut / "run" / MANIFEST_NAME).read_text()
    resumed = one_run(str(cut), str(fleet_path), str(minilm_slice_dir))
    (whole / "result.json").unlink()
    log = whole / "run" / REPORTS_NAME
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-1]))
    redone = one_run(str(whole), str(fleet_path), str(minilm_slice_dir))
    # Assert
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert logged_at_crash == [1] and committed_at_crash
    assert expected.rounds == 3 and len(expected.accuracy) == 3
    assert _same(resumed) == _same(expected)
    assert _same(read_json(RunResult, cut / "result.json")) == _same(expected)
    assert _same(redone) == _same(expected)
    assert [r.global_round for r in read_reports(log)] == [1, 2, 3]
