"""The closed loop starts from HierFedLoRA's static run: the same results as a loop trained from round 1."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from hierfedlora.runtime.checkpoint import REPORTS_NAME
from hierfedlora.validation.experiment_presets import LOOP_METHOD, PRESETS, RunResult, Setting
from hierfedlora.validation.loop_fork import copy_run, discard_stale_copy, loop_twin, static_twin
from tests.factories import make_cost_model
from tests.runtime.conftest import build_small_fleet


@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory: pytest.TempPathFactory):
    """Four devices over a 3-class CSV (the runtime tests' fleet)."""
    return build_small_fleet(tmp_path_factory.mktemp("fork-data"), 4)


def _runner(small_fleet, model_dir: Path, sigma: float):
    """``run(method, out)``: a method of a 4-device, 2-group setting through the experiment's own run step."""
    from hierfedlora.runtime.engine import prepare_run
    from hierfedlora.runtime.options import RunOptions
    from hierfedlora.validation.baselines import make_method_plan
    from hierfedlora.validation.experiment_run import _run_one
    from hierfedlora.validation.experiments import clock_devices_for, problem_for

    fleet, _ = small_fleet
    preset = dataclasses.replace(
        PRESETS["quick"],
        fleet_sizes=(4,),
        num_groups=2,
        methods=("fedlora", "hierfedlora", LOOP_METHOD),
        max_rounds=4,
        eval_samples=16,
        max_seq_len=16,
        batch_size=4,
        speed_error_sigma=sigma,
    )
    setting = Setting(alpha=1.0, num_devices=4, tier_mix="paper", seed=0)
    problem = problem_for(preset, fleet, make_cost_model(2), seed=0)
    truth = clock_devices_for(fleet.devices, preset.speed_error_sigma, seed=0)
    reference = make_method_plan("fedlora", problem, settings=preset.baseline)
    options = RunOptions(rounds=1, model=str(model_dir), max_seq_len=16, eval_samples=16, seed=0)
    context = prepare_run(reference, fleet, options)

    def run(method: str, out: Path) -> RunResult:
        return _run_one(preset, method, setting, problem, fleet, truth, 1e9, out / method, context)

    return run


def _same(result: RunResult) -> RunResult:
    return dataclasses.replace(result, wall_time_s=0.0)


def _lines(out: Path, method: str) -> list[str]:
    return (out / method / "run" / REPORTS_NAME).read_text().splitlines()


@pytest.mark.parametrize("sigma", [0.0, 1.5])
def test_the_loop_from_the_static_run_equals_a_loop_from_round_one(tmp_path, small_fleet, minilm_slice_dir, sigma):
    """With the static run first, the loop's folder holds the static run's report lines (wall times
    included: copied, not trained again) up to its first re-plan, and its result equals, bit for bit,
    the loop's trained alone from round 1. Two fleets: true speeds as profiled (the loop keeps the plan)
    and far from them (the loop measures them and re-plans after round 1)."""
    # Arrange
    run = _runner(small_fleet, minilm_slice_dir, sigma)
    forked, alone = tmp_path / "forked", tmp_path / "alone"
    # Act
    static = run("hierfedlora", forked)
    loop = run(LOOP_METHOD, forked)
    reference = run(LOOP_METHOD, alone)
    # Assert
    assert _same(loop) == _same(reference)
    lines = _lines(forked, LOOP_METHOD)
    shared = next((i for i, line in enumerate(lines) if json.loads(line)["plan_id"] != static.plan_id), len(lines))
    assert shared >= 1 and lines[:shared] == _lines(forked, "hierfedlora")[:shared]
    assert lines[0] != _lines(alone, LOOP_METHOD)[0]  # the same round, trained at another wall time
    if sigma == 0.0:
        assert loop.replans == 0 and shared == len(lines) == len(static.sim_time_s)
    else:
        assert loop.replans >= 1 and shared == 1


def test_twins_pair_methods_under_one_rule():
    """The loop and the static method pair under the same rule only, never under `@best`."""
    methods = ["fedlora", "hierfedlora", "hierfedlora_loop", "hierfedlora@fedex", "hierfedlora_loop@best"]
    assert loop_twin("hierfedlora", methods) == "hierfedlora_loop"
    assert static_twin("hierfedlora_loop", methods) == "hierfedlora"
    assert loop_twin("hierfedlora@fedex", methods) is None
    assert static_twin("hierfedlora_loop@best", methods) is None
    assert loop_twin("fedlora", methods) is None


def test_a_copy_never_lands_on_a_loop_that_began(tmp_path):
    """`copy_run` leaves a loop folder that holds a run alone; into an empty one it copies run and plan whole."""
    # Arrange
    static = tmp_path / "hierfedlora"
    (static / "run").mkdir(parents=True)
    (static / "run" / REPORTS_NAME).write_text("{}\n")
    (static / "initial_plan.json").write_text("{}")
    began = tmp_path / "began"
    (began / "run").mkdir(parents=True)
    # Act
    into_began = copy_run(static / "run", began)
    into_new = copy_run(static / "run", tmp_path / "new")
    # Assert
    assert not into_began and list((began / "run").iterdir()) == []
    assert into_new and (tmp_path / "new" / "run" / REPORTS_NAME).read_text() == "{}\n"
    assert (tmp_path / "new" / "initial_plan.json").exists()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["initial_plan.json", "run"]
    shutil.rmtree(tmp_path / "new")


def test_a_half_made_copy_is_discarded(tmp_path):
    """What a kill leaves mid-copy (the staged run folder and plan) is removed; a whole copy stays."""
    # Arrange
    (tmp_path / "run.fork").mkdir()
    (tmp_path / "run.fork" / REPORTS_NAME).write_text("{}\n")
    (tmp_path / "initial_plan.json.fork").write_text("{")
    (tmp_path / "run").mkdir()
    # Act
    discard_stale_copy(tmp_path)
    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
