"""run_plan executes a plan for real, commits every round, and resumes exactly after a stop or a SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from hierfedlora.planner.errors import InvalidInputError, ResumeMismatchError
from hierfedlora.planner.io import write_json
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.options import RunOptions
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import cli_run_args, committed_tensors, comparable, run_options


def test_run_commits_and_reports_every_round(tmp_path, small_fleet, minilm_slice_dir):
    """Three rounds give three committed reports, a growing clock and bytes on the wire."""
    # Arrange
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    # Act
    reports = list(run_plan(plan, fleet, make_cost_model(2), run_options(minilm_slice_dir, 3), tmp_path / "run"))
    # Assert
    assert [r.global_round for r in reports] == [1, 2, 3]
    assert [r.global_round for r in read_reports(tmp_path / "run" / REPORTS_NAME)] == [1, 2, 3]
    assert reports[0].sim_time_s > 0 and reports[1].sim_time_s > reports[0].sim_time_s
    assert all(r.upload_bytes > 0 and r.download_bytes > 0 for r in reports)
    assert set(reports[0].measured_step_s) == set(plan.device_ids)
    assert all(0.0 <= r.eval_accuracy <= 1.0 for r in reports)


@pytest.mark.parametrize("batched_devices", [64, 1])
def test_resume_after_a_stop_matches_an_uninterrupted_run(tmp_path, small_fleet, minilm_slice_dir, batched_devices):
    """Stopping after round 1 and resuming gives the same adapters, bit for bit, and the same report lines,
    with devices trained as one batch (the default) and one after another."""
    # Arrange
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    context = prepare_run(plan, fleet, run_options(minilm_slice_dir, 3))

    def options(rounds: int) -> RunOptions:
        return run_options(minilm_slice_dir, rounds, batched_devices=batched_devices)

    # Act
    reports = list(run_plan(plan, fleet, cost, options(3), tmp_path / "whole", context=context))
    list(run_plan(plan, fleet, cost, options(1), tmp_path / "split", context=context))
    list(run_plan(plan, fleet, cost, options(3), tmp_path / "split", resume=True, context=context))
    # Assert
    step_seconds = {reports[0].measured_step_s[d] for d in plan.groups[0].device_ids}
    assert len(step_seconds) == (1 if batched_devices > 1 else len(plan.groups[0].device_ids))  # one batch or not
    whole, split = committed_tensors(tmp_path / "whole"), committed_tensors(tmp_path / "split")
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    whole_reports = [comparable(r) for r in read_reports(tmp_path / "whole" / REPORTS_NAME)]
    split_reports = [comparable(r) for r in read_reports(tmp_path / "split" / REPORTS_NAME)]
    assert split_reports == whole_reports


def test_resume_refuses_another_plan(tmp_path, small_fleet, minilm_slice_dir):
    """A checkpoint of one plan cannot be resumed with another."""
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    list(run_plan(plan, fleet, make_cost_model(2), run_options(minilm_slice_dir, 1), tmp_path / "run"))
    other = dataclasses.replace(plan, groups=(dataclasses.replace(plan.groups[0], intra_rounds=1), plan.groups[1]))
    with pytest.raises(ResumeMismatchError) as info:
        list(
            run_plan(other, fleet, make_cost_model(2), run_options(minilm_slice_dir, 2), tmp_path / "run", resume=True)
        )
    assert info.value.field == "plan_id"


@pytest.mark.parametrize(
    ("change", "path", "expected"),
    [
        ("unknown_device", "groups[0].device_ids", "ids of devices in the fleet"),
        ("deep", "groups[1].depth", "an integer in 1..2 (the model's layers)"),
        ("no_data", "fleet.sample_indices", "per-device sample indices"),
    ],
)
def test_bad_plans_fail_before_training(tmp_path, small_fleet, minilm_slice_dir, change, path, expected):
    """An unknown device, a depth beyond the model, or a fleet without data is refused before any training."""
    # Arrange
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    if change == "unknown_device":
        plan = dataclasses.replace(
            plan, groups=(dataclasses.replace(plan.groups[0], device_ids=("d0", "ghost")), plan.groups[1])
        )
    elif change == "deep":
        plan = dataclasses.replace(plan, groups=(plan.groups[0], dataclasses.replace(plan.groups[1], depth=5)))
    else:
        fleet = dataclasses.replace(fleet, sample_indices=(), dataset=None)
    # Act
    with pytest.raises(InvalidInputError) as info:
        list(run_plan(plan, fleet, make_cost_model(2), run_options(minilm_slice_dir, 1), tmp_path / "run"))
    # Assert
    assert path in [issue.path for issue in info.value.issues]
    assert expected in str(info.value)
    assert not (tmp_path / "run" / REPORTS_NAME).exists()


def test_sigkill_mid_run_then_resume_matches(tmp_path, small_fleet, minilm_slice_dir, whole_cli_run):
    """A run killed with SIGKILL mid-way and resumed ends with rounds 1..N once and the uninterrupted adapters
    (each group's devices trained as one batch, the default, in three processes)."""
    # Arrange: the uninterrupted run is ``whole_cli_run``'s, of the same plan and cost model files
    _, fleet_path = small_fleet
    plan_path, cost_path, rounds = whole_cli_run.plan_path, whole_cli_run.cost_path, whole_cli_run.rounds
    # Act: kill as soon as round 2 is committed or later, then resume
    process = subprocess.Popen(
        cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, tmp_path / "cut", rounds),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reports_path = tmp_path / "cut" / REPORTS_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if reports_path.exists() and reports_path.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    if process.poll() is None:  # a run that already ended (or failed) has nothing left to kill
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    committed_at_kill = len(read_reports(reports_path)) if reports_path.exists() else 0
    resumed = subprocess.run(
        cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, tmp_path / "cut", rounds, resume=True),
        capture_output=True,
        text=True,
    )
    # Assert
    assert process.returncode == -signal.SIGKILL, f"the run ended by itself (exit {process.returncode})"
    assert committed_at_kill < rounds
    assert resumed.returncode == 0, resumed.stderr
    assert [r.global_round for r in read_reports(reports_path)] == list(range(1, rounds + 1))
    whole, cut = committed_tensors(whole_cli_run.run_dir), committed_tensors(tmp_path / "cut")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


def test_ctrl_c_finishes_the_round_exits_130_and_resumes(tmp_path, small_fleet, minilm_slice_dir, whole_cli_run):
    """SIGINT mid-run lets the current round commit, exits 130 naming the round, and the run resumes to the end,
    to the uninterrupted run's adapters and reports."""
    # Arrange: the uninterrupted run is ``whole_cli_run``'s, of the same plan and cost model files
    _, fleet_path = small_fleet
    plan_path, cost_path, rounds = whole_cli_run.plan_path, whole_cli_run.cost_path, whole_cli_run.rounds
    reports_path = tmp_path / "run" / REPORTS_NAME
    process = subprocess.Popen(
        cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, tmp_path / "run", rounds),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if reports_path.exists() and reports_path.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    # Act
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    committed = [r.global_round for r in read_reports(reports_path)]
    resumed = subprocess.run(
        cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, tmp_path / "run", rounds, resume=True),
        capture_output=True,
        text=True,
    )
    # Assert
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert committed == list(range(1, len(committed) + 1)) and len(committed) < rounds
    assert f"interrupted after global round {committed[-1]}" in stderr
    assert resumed.returncode == 0, resumed.stderr
    got, expected = read_reports(reports_path), read_reports(whole_cli_run.run_dir / REPORTS_NAME)
    assert [r.global_round for r in got] == list(range(1, rounds + 1))
    assert [comparable(r) for r in got] == [comparable(r) for r in expected]
    whole, cut = committed_tensors(whole_cli_run.run_dir), committed_tensors(tmp_path / "run")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)


class SwitchAfter:
    """A deterministic replanner: after round ``at`` it makes every group as deep as the model."""

    def __init__(self, at: int, depth: int) -> None:
        self.at, self.depth, self.calls = at, depth, 0

    def __call__(self, plan, reports, plans):
        self.calls += 1
        if len(reports) != self.at:
            return None
        deeper = tuple(dataclasses.replace(g, depth=self.depth) for g in plan.groups)
        return dataclasses.replace(plan, groups=deeper, parent_plan_id=plan.plan_id, reason="deeper")


def test_a_replanner_switches_plans_and_keeps_the_adapters(tmp_path, small_fleet, minilm_slice_dir):
    """After round 2 the run continues under the new plan, from the merged adapters of round 2."""
    # Arrange
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    context = prepare_run(plan, fleet, run_options(minilm_slice_dir, 3))
    # Act
    reports = list(
        run_plan(
            plan,
            fleet,
            cost,
            run_options(minilm_slice_dir, 3),
            tmp_path / "r",
            context=context,
            replanner=SwitchAfter(2, 2),
        )
    )
    # Assert
    new_id = reports[2].plan_id
    assert [r.plan_id for r in reports[:2]] == [plan.plan_id] * 2 and new_id != plan.plan_id
    assert (tmp_path / "r" / "plans" / f"{new_id}.json").exists()
    assert json.loads((tmp_path / "r" / "plan.json").read_text())["parent_plan_id"] == plan.plan_id
    static = list(run_plan(plan, fleet, cost, run_options(minilm_slice_dir, 2), tmp_path / "s", context=context))
    assert [comparable(r) for r in static] == [comparable(r) for r in reports[:2]]  # same until the switch


def test_resume_after_a_replan_matches_an_uninterrupted_run(tmp_path, small_fleet, minilm_slice_dir):
    """A run stopped right after the round that triggered a re-plan resumes under the new plan, bit for bit."""
    # Arrange
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    context = prepare_run(plan, fleet, run_options(minilm_slice_dir, 4))
    # Act
    list(
        run_plan(
            plan,
            fleet,
            cost,
            run_options(minilm_slice_dir, 4),
            tmp_path / "whole",
            context=context,
            replanner=SwitchAfter(1, 2),
        )
    )
    for rounds in (1, 2, 4):  # stopped after round 1 and after round 2, resumed each time
        list(
            run_plan(
                plan,
                fleet,
                cost,
                run_options(minilm_slice_dir, rounds),
                tmp_path / "split",
                resume=rounds > 1,
                context=context,
                replanner=SwitchAfter(1, 2),
            )
        )
    # Assert
    whole, split = committed_tensors(tmp_path / "whole"), committed_tensors(tmp_path / "split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    whole_reports = [comparable(r) for r in read_reports(tmp_path / "whole" / REPORTS_NAME)]
    split_reports = [comparable(r) for r in read_reports(tmp_path / "split" / REPORTS_NAME)]
    assert split_reports == whole_reports
    assert len({r["plan_id"] for r in whole_reports}) == 2


def test_a_replan_naming_unknown_devices_is_refused(tmp_path, small_fleet, minilm_slice_dir):
    """A replanner that returns a plan with a device the fleet lacks stops the run with a named field."""
    # Arrange
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)

    def stranger(plan, reports, plans):
        groups = (dataclasses.replace(plan.groups[0], device_ids=("ghost",)), *plan.groups[1:])
        return dataclasses.replace(plan, groups=groups, parent_plan_id=plan.plan_id)

    # Act / Assert
    with pytest.raises(InvalidInputError, match="ghost"):
        list(
            run_plan(
                plan, fleet, make_cost_model(2), run_options(minilm_slice_dir, 2), tmp_path / "r", replanner=stranger
            )
        )


def test_clock_devices_and_group_evaluation_switch(tmp_path, small_fleet, minilm_slice_dir):
    """Slower real devices lengthen the simulated round and show in device_step_s; groups can go unevaluated."""
    # Arrange
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    slow = tuple(dataclasses.replace(d, compute_scale=d.compute_scale * 3) for d in fleet.devices)
    context = prepare_run(plan, fleet, run_options(minilm_slice_dir, 1))
    # Act
    (base,) = list(run_plan(plan, fleet, cost, run_options(minilm_slice_dir, 1), tmp_path / "a", context=context))
    (slowed,) = list(
        run_plan(
            plan,
            fleet,
            cost,
            run_options(minilm_slice_dir, 1, evaluate_groups=False),
            tmp_path / "b",
            context=context,
            clock_devices=slow,
        )
    )
    # Assert
    assert slowed.sim_time_s > base.sim_time_s
    for device_id, seconds in base.device_step_s.items():
        assert slowed.device_step_s[device_id] == pytest.approx(3 * seconds)
    assert all(g.accuracy is not None for g in base.groups)
    assert all(g.accuracy is None for g in slowed.groups)
    assert slowed.eval_accuracy == base.eval_accuracy  # same training; only the clock differs


def _cli_run_with_replan_every(tmp_path, small_fleet, model_dir, period: str) -> list[str]:
    """The CLI run of the hand plan for 2 rounds into ``tmp_path/run``, with ``--replan-every period``."""
    fleet, fleet_path = small_fleet
    plan_path, cost_path = tmp_path / "plan.json", tmp_path / "cost.json"
    write_json(plan_path, make_two_group_plan(fleet))
    write_json(cost_path, make_cost_model(2))
    return [*cli_run_args(plan_path, fleet_path, cost_path, model_dir, tmp_path / "run", 2), "--replan-every", period]


def test_cli_closed_loop_consults_the_planner_every_round(tmp_path, small_fleet, minilm_slice_dir):
    """`run --replan-every 1` consults the planner after round 1 (logged with its reason) and commits rounds 1..N."""
    # Arrange
    command = _cli_run_with_replan_every(tmp_path, small_fleet, minilm_slice_dir, "1")
    # Act
    done = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert done.returncode == 0, done.stderr
    assert [r.global_round for r in read_reports(tmp_path / "run" / REPORTS_NAME)] == [1, 2]
    assert "re-plan " in done.stderr and "after global round 1" in done.stderr


def test_cli_refuses_a_bad_replan_period_before_training(tmp_path, small_fleet, minilm_slice_dir):
    """`run --replan-every 0` exits 2 naming the flag, and writes no run folder."""
    # Arrange
    command = _cli_run_with_replan_every(tmp_path, small_fleet, minilm_slice_dir, "0")
    # Act
    done = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert done.returncode == 2 and "--replan-every" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
