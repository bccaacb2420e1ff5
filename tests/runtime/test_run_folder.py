"""Run folders: one writer at a time (real processes), a dead writer's lock never blocks a resume,
the crash window between a checkpoint and its report line loses nothing (for `run` and for an
experiment's run), and `run` refuses inputs and folders it cannot use before it loads a model or
creates anything."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import sha256_of, to_dict, write_json
from hierfedlora.planner.sealed import read_sealed_json
from hierfedlora.runtime.checkpoint import CRASH_AFTER_COMMIT_ENV, MANIFEST_NAME, REPORTS_NAME, read_reports
from hierfedlora.runtime.run_folder import LOCK_NAME, check_run_folder, lock_folder
from hierfedlora.validation.experiments import PRESETS, RunResult
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import cli_run_args, committed_tensors, comparable

HOLD = (
    "import sys\n"
    "from hierfedlora.runtime.run_folder import lock_folder\n"
    "with lock_folder(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"
)


def _holder(folder: Path) -> subprocess.Popen[str]:
    """A second real process that takes the folder's lock and keeps it until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


@pytest.fixture
def run_inputs(tmp_path, small_fleet):
    fleet, fleet_path = small_fleet
    plan_path, cost_path = tmp_path / "plan.json", tmp_path / "cost.json"
    write_json(plan_path, make_two_group_plan(fleet))
    write_json(cost_path, make_cost_model(2))
    return fleet, fleet_path, plan_path, cost_path


def test_a_second_run_into_a_held_folder_fails_at_once_naming_the_holder(tmp_path, run_inputs, minilm_slice_dir):
    """While another process holds --out, `hierfedlora run` exits 2 with "X is in use by process PID" and
    writes nothing there; once the holder is gone, the same folder is free."""
    # Arrange
    _, fleet_path, plan_path, cost_path = run_inputs
    out = tmp_path / "run"
    holder = _holder(out)
    # Act
    try:
        second = subprocess.run(
            cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, out, 1), capture_output=True, text=True
        )
    finally:
        holder.communicate("")
    # Assert
    assert second.returncode == 2, second.stderr
    assert f"{out} is in use by process {holder.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    with lock_folder(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    """A holder killed with SIGKILL leaves its lock file behind, with its pid, yet the folder is free at once."""
    # Arrange
    holder = _holder(tmp_path / "run")
    dead_pid = holder.pid
    # Act
    os.kill(dead_pid, signal.SIGKILL)
    holder.wait()
    left = (tmp_path / "run" / LOCK_NAME).read_text().strip()
    with lock_folder(tmp_path / "run") as folder:
        mine = (folder / LOCK_NAME).read_text().strip()
    # Assert
    assert left == str(dead_pid)
    assert mine == str(os.getpid())


def test_a_lock_in_the_same_process_is_refused_and_a_failed_block_leaves_no_empty_folder(tmp_path):
    """Two holders in one process conflict too; a folder the lock created is removed when the block fails
    before writing anything, and kept (with what was written) otherwise."""
    # Arrange
    fresh, used = tmp_path / "fresh", tmp_path / "used"
    # Act
    with lock_folder(used), pytest.raises(InvalidInputError, match="in use by process"):
        with lock_folder(used):
            pass
    with pytest.raises(RuntimeError), lock_folder(fresh):
        raise RuntimeError("model failed to load")
    with pytest.raises(RuntimeError), lock_folder(used) as folder:
        (folder / "plan.json").write_text("{}")
        raise RuntimeError("later failure")
    # Assert
    assert not fresh.exists()
    assert sorted(p.name for p in used.iterdir()) == [LOCK_NAME, "plan.json"]


def test_run_crash_between_checkpoint_and_report_resumes_exactly(
    tmp_path, small_fleet, minilm_slice_dir, whole_cli_run
):
    """The crash window (round 2 committed, its report not appended, the process SIGKILLed holding the lock),
    injected by the fault hook: the resume appends round 2 once, finishes, and matches an uninterrupted run."""
    # Arrange: the uninterrupted run is ``whole_cli_run``'s, of the same plan and cost model files
    _, fleet_path = small_fleet
    plan_path, cost_path, rounds = whole_cli_run.plan_path, whole_cli_run.cost_path, whole_cli_run.rounds
    cut = tmp_path / "cut"
    # Act
    crashed = subprocess.run(
        cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, cut, rounds),
        capture_output=True,
        text=True,
        env={**os.environ, CRASH_AFTER_COMMIT_ENV: "2"},
    )
    logged_at_crash = [r.global_round for r in read_reports(cut / REPORTS_NAME)]
    committed_at_crash = (cut / MANIFEST_NAME).read_text()
    resumed = subprocess.run(
        cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, cut, rounds, resume=True),
        capture_output=True,
        text=True,
    )
    # Assert
    assert crashed.returncode == -signal.SIGKILL
    assert logged_at_crash == [1] and '"global_round": 2' in committed_at_crash
    assert resumed.returncode == 0, resumed.stderr
    got, expected = read_reports(cut / REPORTS_NAME), read_reports(whole_cli_run.run_dir / REPORTS_NAME)
    assert [r.global_round for r in got] == list(range(1, rounds + 1))
    assert [comparable(r) for r in got] == [comparable(r) for r in expected]
    adapters, reference = committed_tensors(cut), committed_tensors(whole_cli_run.run_dir)
    assert adapters.keys() == reference.keys() and all((adapters[k] == reference[k]).all() for k in reference)


def _run_cli(plan_path, fleet_path, cost_path, model_dir, out, *, resume=False):
    return subprocess.run(
        cli_run_args(plan_path, fleet_path, cost_path, model_dir, out, 1, resume=resume), capture_output=True, text=True
    )


def test_run_refuses_a_plan_for_other_inputs_before_creating_out(tmp_path, run_inputs, minilm_slice_dir):
    """A plan naming a device the fleet lacks, made for another fleet or cost model, or with a non-string
    fingerprint: exit 2 naming the field, and --out is never created."""
    # Arrange
    fleet, fleet_path, _, cost_path = run_inputs
    plan = make_two_group_plan(fleet)
    cases = {
        "unknown device": (
            to_dict(dataclasses.replace(plan, groups=(dataclasses.replace(plan.groups[0], device_ids=("ghost",)),))),
            "groups[0].device_ids must be ids of devices in fleet.json; got ['ghost']",
        ),
        "other fleet": (
            to_dict(dataclasses.replace(plan, fleet_sha256="0" * 64)),
            "plan.fleet_sha256 must be the sha256 of fleet.json's devices",
        ),
        "other cost model": (
            to_dict(dataclasses.replace(plan, fleet_sha256=sha256_of(fleet.devices), cost_model_sha256="f" * 64)),
            "plan.cost_model_sha256 must be the sha256 of cost.json",
        ),
        "non-string fingerprint": (
            {**to_dict(plan), "cost_model_sha256": 7},
            "cost_model_sha256 must be a string; got 7",
        ),
        "devices left out": (  # the 4-device plan on a 12-device fleet, fingerprint or not
            to_dict(dataclasses.replace(plan, groups=plan.groups[:1])),
            f"plan: groups must be a plan with every device of fleet.json ({len(fleet.devices)}) in a group; "
            f"got '2 left out: {', '.join(plan.groups[1].device_ids)}'",
        ),
    }
    for name, (data, message) in cases.items():
        plan_path, out = tmp_path / f"{name}.json", tmp_path / f"out-{name}"
        write_json(plan_path, data)
        # Act
        done = _run_cli(plan_path, fleet_path, cost_path, minilm_slice_dir, out)
        # Assert
        assert done.returncode == 2, (name, done.stderr)
        assert message in done.stderr, (name, done.stderr)
        assert not out.exists(), name


def test_run_refuses_a_plan_without_a_cost_fingerprint_unless_allowed(tmp_path, run_inputs, minilm_slice_dir):
    """A hand-written plan without cost_model_sha256: exit 2 naming the field and the flag, no --out; with
    --allow-cost-mismatch it is a warning (the check runs before the model loads either way)."""
    # Arrange
    _, fleet_path, plan_path, cost_path = run_inputs
    refused = tmp_path / "refused"
    command = cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, refused, 1)
    command.remove("--allow-cost-mismatch")
    # Act
    done = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert done.returncode == 2, done.stderr
    assert "plan: plan.cost_model_sha256 must be the sha256 of the cost model the plan was made with" in done.stderr
    assert "pass --allow-cost-mismatch" in done.stderr and "Traceback" not in done.stderr
    assert not refused.exists()


def test_run_refuses_a_folder_it_cannot_resume_or_start(tmp_path, run_inputs, minilm_slice_dir):
    """--resume where checkpoint.json is gone but reports or tensors remain: exit 2 saying so (never a silent
    restart from round 0); a new run into a folder holding one: exit 2 pointing to --resume."""
    # Arrange
    _, fleet_path, plan_path, cost_path = run_inputs
    lost, kept_tensors = tmp_path / "lost", tmp_path / "kept"
    lost.mkdir()
    (lost / REPORTS_NAME).write_text('{"round": 1}\n')
    kept_tensors.mkdir()
    (kept_tensors / REPORTS_NAME).write_text("")
    (kept_tensors / "checkpoint-000003-abcdef012345.safetensors").write_bytes(b"x")
    # Act
    resumed = _run_cli(plan_path, fleet_path, cost_path, minilm_slice_dir, lost, resume=True)
    fresh = _run_cli(plan_path, fleet_path, cost_path, minilm_slice_dir, lost)
    # Assert
    assert resumed.returncode == 2
    assert f"{lost}: checkpoint.json is missing but 1 report lines remain" in resumed.stderr
    assert "start it in a new folder" in resumed.stderr and "resume the run" not in resumed.stderr
    assert fresh.returncode == 2 and "pass --resume to continue it" in fresh.stderr
    with pytest.raises(InvalidInputError, match=r"checkpoint\.json is missing but 1 tensor file"):
        check_run_folder(kept_tensors, resume=True)
    check_run_folder(tmp_path / "never-used", resume=True)  # nothing committed: a fresh start is right


ROOT = Path(__file__).parents[2]


def one_run(out: str, fleet_path: str, model_dir: str) -> RunResult:
    """FedLoRA for 3 rounds on the 4-device fleet and the 2-layer model, through the experiment's own run step
    (the test and its crashing subprocess call this same code)."""
    from hierfedlora.planner.fleet import load_fleet
    from hierfedlora.runtime.engine import prepare_run
    from hierfedlora.runtime.options import RunOptions
    from hierfedlora.validation.baselines import make_method_plan
    from hierfedlora.validation.experiment_presets import Setting
    from hierfedlora.validation.experiment_run import _run_one
    from hierfedlora.validation.experiments import clock_devices_for, problem_for
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


def test_experiment_crash_between_checkpoint_and_report_loses_no_round(tmp_path, small_fleet, minilm_slice_dir):
    """Round 2 committed, its report line not written, the process SIGKILLed (the fault hook), then the
    experiment run again: its result has all 3 rounds, equal to an uninterrupted run's. And the issue's
    repro: a finished run with result.json and the last report line deleted gives the same result again."""
    # Arrange
    _, fleet_path = small_fleet
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    expected = one_run(str(whole), str(fleet_path), str(minilm_slice_dir))
    code = "import sys; from tests.runtime.test_run_folder import one_run; one_run(*sys.argv[1:])"
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
    assert _same(read_sealed_json(RunResult, cut / "result.json")) == _same(expected)
    assert _same(redone) == _same(expected)
    assert [r.global_round for r in read_reports(log)] == [1, 2, 3]


def test_taking_a_folder_removes_the_torn_writes_of_a_killed_holder(tmp_path):
    """A holder SIGKILLed inside an atomic write leaves `.NAME.XXXX.tmp` behind (never renamed into place); the
    next holder deletes those, in the folder and in plans/, and nothing else."""
    # Arrange
    folder = tmp_path / "run"
    (folder / "plans").mkdir(parents=True)
    torn = [
        folder / ".checkpoint.json.ab12cd.tmp",
        folder / ".accuracy_vs_time.png.x.tmp",
        folder / "plans" / ".p.json.y.tmp",
    ]
    kept = [folder / "reports.jsonl", folder / "plans" / "p.json", folder / "notes.tmp"]
    for path in torn + kept:
        path.write_text("x")
    # Act
    with lock_folder(folder):
        left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    # Assert
    assert left == sorted([LOCK_NAME, "notes.tmp", "plans/p.json", "reports.jsonl"])
