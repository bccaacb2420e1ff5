"""The Ray executor on a local Ray cluster: the in-process results, bit for bit; memory refused before dispatch."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import write_json
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import run_plan
from hierfedlora.runtime.executors import Executor
from hierfedlora.runtime.executors.ray import RayExecutor
from hierfedlora.runtime.options import RunOptions
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import cli_run_args, committed_tensors

pytestmark = pytest.mark.ray

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # no accelerator here; silences Ray's FutureWarning
    # Ray's raylet renices its workers by 15 (max 19), where they wait behind any other load; the actors
    # are what the tests wait on, so they keep the test's priority
    "RAY_worker_niceness": "0",
}


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray cluster for the module (starting Ray takes seconds); its GCS address."""
    ray = pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="hfl-ray-")  # short: Ray's socket paths must stay under 108 bytes
    with pytest.MonkeyPatch.context() as env:
        for name, value in RAY_ENV.items():
            env.setenv(name, value)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=temp_dir)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _options(model_dir, rounds: int) -> RunOptions:
    # batched_devices=1: Ray actors train device by device, the in-process reference must too (bit for bit)
    return RunOptions(
        rounds=rounds, model=str(model_dir), eval_samples=16, eval_batch_size=16, seed=3, batched_devices=1
    )


def _free_cpus(ray, expected: float, timeout_s: float = 30.0) -> float:
    """The cluster's free CPUs once they reach ``expected`` (Ray frees a killed actor's asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while (free := ray.available_resources().get("CPU", 0.0)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return free


def test_two_actors_give_the_in_process_adapters_and_reports(tmp_path, ray_cluster, six_device_fleet, minilm_slice_dir):
    """Six devices in two groups of depth 1 and 2 on two actors: adapters and reports equal the in-process run's."""
    import ray

    # Arrange
    fleet, _ = six_device_fleet
    plan, cost, options = make_two_group_plan(fleet), make_cost_model(2), _options(minilm_slice_dir, 2)
    reference = list(run_plan(plan, fleet, cost, options, tmp_path / "inprocess"))
    executor = RayExecutor(plan, fleet, options, cost, num_actors=2)
    # Act
    try:
        remote = list(run_plan(plan, fleet, cost, options, tmp_path / "ray", executor=executor))
        pids = executor.actor_pids
    finally:
        executor.close()
    # Assert
    assert isinstance(executor, Executor)
    assert len(set(pids)) == 2
    ids = tuple(d.device_id for d in fleet.devices)
    assert executor.devices_of_actor == (ids[0::2], ids[1::2])
    ours, theirs = committed_tensors(tmp_path / "inprocess"), committed_tensors(tmp_path / "ray")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [r.eval_loss for r in remote] == [r.eval_loss for r in reference]
    assert [r.sim_time_s for r in remote] == [r.sim_time_s for r in reference]
    assert [g.loss for r in remote for g in r.groups] == [g.loss for r in reference for g in r.groups]
    assert [r.global_round for r in read_reports(tmp_path / "ray" / REPORTS_NAME)] == [1, 2]
    assert _free_cpus(ray, 2.0) == 2.0  # close() released both actors


def test_actors_that_cannot_hold_their_devices_are_refused(ray_cluster, six_device_fleet, minilm_slice_dir):
    """A per-actor memory below the cost model's need, and more actors than CPUs, fail with the numbers."""
    import ray

    # Arrange
    fleet, _ = six_device_fleet
    plan, cost, options = make_two_group_plan(fleet), make_cost_model(2), _options(minilm_slice_dir, 1)
    # Act
    with pytest.raises(InvalidInputError) as small:
        RayExecutor(plan, fleet, options, cost, num_actors=2, memory_bytes=100 * 2**20)
    with pytest.raises(InvalidInputError) as crowded:
        RayExecutor(plan, fleet, options, cost, num_actors=3)
    # Assert
    assert [i.path for i in small.value.issues] == ["ray.memory_bytes", "ray.memory_bytes"]
    assert "actor 0's" in str(small.value) and "prefix cache" in str(small.value)
    assert [i.path for i in crowded.value.issues] == ["ray.num_actors"]
    assert "each 1 CPU" in str(crowded.value) and "nodes: 2 CPUs" in str(crowded.value)
    assert _free_cpus(ray, 2.0) == 2.0  # nothing was started


def test_bad_executor_settings_are_reported_together(ray_cluster, six_device_fleet, minilm_slice_dir):
    """Zero actors, a fractional CPU count and a negative memory are three issues in one error."""
    fleet, _ = six_device_fleet
    plan, options = make_two_group_plan(fleet), _options(minilm_slice_dir, 1)
    with pytest.raises(InvalidInputError) as info:
        RayExecutor(plan, fleet, options, make_cost_model(2), num_actors=0, num_cpus_per_actor=1.5, memory_bytes=-1)
    assert [i.path for i in info.value.issues] == ["ray.num_actors", "ray.num_cpus_per_actor", "ray.memory_bytes"]


def _live_processes_of_session(session_id: int, timeout_s: float = 30.0) -> list[int]:
    """Processes (zombies aside) still in ``session_id`` once none are left or ``timeout_s`` has passed."""

    def scan() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session_id and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
                found.append(int(stat.parent.name))
        return found

    deadline = time.monotonic() + timeout_s
    while (alive := scan()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def _niceness(pid: int) -> int:
    """The process's nice value (field 19 of ``/proc/PID/stat``)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _ray_workers_of_session(session_id: int) -> dict[int, int]:
    """Ray worker processes (titled ``ray::...``) in ``session_id``, by pid: their nice values."""
    found = {}
    for pid in _live_processes_of_session(session_id, timeout_s=0.0):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                found[pid] = _niceness(pid)
    return found


def test_cli_ray_run_killed_and_resumed_matches_the_in_process_run(
    tmp_path, ray_cluster, six_device_fleet, minilm_slice_dir
):
    """`run --executor ray` on its own local Ray, SIGKILLed after round 1 and resumed on a running cluster
    (`--ray-address`), commits rounds 1..N once and ends with the uninterrupted in-process adapters; the
    killed run's Ray processes all go with its process group."""
    import ray

    # Arrange
    fleet, fleet_path = six_device_fleet
    plan, cost, rounds = make_two_group_plan(fleet), make_cost_model(2), 2
    plan_path, cost_path = tmp_path / "plan.json", tmp_path / "cost.json"
    write_json(plan_path, plan)
    write_json(cost_path, cost)
    list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, rounds), tmp_path / "whole"))
    command = cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, tmp_path / "cut", rounds)
    env = {**os.environ, **RAY_ENV}
    reports_path = tmp_path / "cut" / REPORTS_NAME
    # Act: its own Ray in a new session, killed once round 1 is committed; then resumed on the test's cluster
    process = subprocess.Popen(
        [*command, "--executor", "ray", "--ray-actors", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if reports_path.exists() and reports_path.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # Ray's gcs, raylet, agents and workers share the run's group
    left_behind = _live_processes_of_session(process.pid)
    killed_at = len(read_reports(reports_path))
    resumed = subprocess.run(
        [*command, "--resume", "--executor", "ray", "--ray-address", ray_cluster, "--ray-actors", "2"],
        capture_output=True,
        text=True,
        env=env,
    )
    # Assert
    assert left_behind == []
    assert 1 <= killed_at < rounds
    assert resumed.returncode == 0, resumed.stderr
    assert [r.global_round for r in read_reports(reports_path)] == list(range(1, rounds + 1))
    whole, cut = committed_tensors(tmp_path / "whole"), committed_tensors(tmp_path / "cut")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    assert _free_cpus(ray, 2.0) == 2.0  # the resumed run's actors were released at its end


def test_cli_refuses_ray_flags_without_the_ray_executor(tmp_path, six_device_fleet, minilm_slice_dir):
    """`--ray-actors` with the in-process executor exits 2 naming the flag, before any training."""
    fleet, fleet_path = six_device_fleet
    plan_path, cost_path = tmp_path / "plan.json", tmp_path / "cost.json"
    write_json(plan_path, make_two_group_plan(fleet))
    write_json(cost_path, make_cost_model(2))
    command = cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, tmp_path / "run", 1, "--ray-actors", "2")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "--executor must be ray when --ray-actors is given; got 'inprocess'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / REPORTS_NAME).exists()


def test_ctrl_c_on_a_run_with_its_own_ray_finishes_the_round_and_stops_ray(
    tmp_path, six_device_fleet, minilm_slice_dir
):
    """SIGINT to the whole process group (a terminal's Ctrl-C) lets the round commit, exits 130, and the
    local Ray the run started is stopped: no process is left in its session. Its Ray workers ran at the
    run's own CPU priority (Ray's default would renice them by 15; the test does not set it)."""
    # Arrange
    fleet, fleet_path = six_device_fleet
    plan_path, cost_path = tmp_path / "plan.json", tmp_path / "cost.json"
    write_json(plan_path, make_two_group_plan(fleet))
    write_json(cost_path, make_cost_model(2))
    command = cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, tmp_path / "run", 4)
    env = {**os.environ, **RAY_ENV}
    del env["RAY_worker_niceness"]  # the product's own setting is under test
    reports_path = tmp_path / "run" / REPORTS_NAME
    process = subprocess.Popen(
        [*command, "--executor", "ray", "--ray-actors", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if reports_path.exists() and reports_path.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        workers, own = _ray_workers_of_session(process.pid), _niceness(process.pid)
        # Act
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
        left_behind = _live_processes_of_session(process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    committed = [r.global_round for r in read_reports(reports_path)]
    # Assert
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and f"interrupted after global round {committed[-1]}" in stderr
    assert committed == list(range(1, len(committed) + 1)) and len(committed) < 4
    assert left_behind == []
    assert len(workers) >= 2 and set(workers.values()) == {own}, (own, workers)
