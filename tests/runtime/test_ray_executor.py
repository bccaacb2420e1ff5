"""The Ray executor on a local Ray cluster: the in-process results, bit for bit; memory refused before dispatch."""

from __future__ import annotations

import json
import shutil
import tempfile
import time

import pytest
import torch
from safetensors.torch import load_file

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.runtime.checkpoint import MANIFEST_NAME, REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import run_plan
from hierfedlora.runtime.executors import Executor
from hierfedlora.runtime.executors.ray import RayExecutor
from hierfedlora.runtime.options import RunOptions
from tests.factories import make_cost_model, make_two_group_plan

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray cluster for the module (starting Ray takes seconds); its GCS address."""
    ray = pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="hfl-ray-")  # short: Ray's socket paths must stay under 108 bytes
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no accelerator here; silences Ray's FutureWarning
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=temp_dir)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _options(model_dir, rounds: int) -> RunOptions:
    return RunOptions(rounds=rounds, model=str(model_dir), eval_samples=16, eval_batch_size=16, seed=3)


def _final_adapters(run_dir) -> dict[str, torch.Tensor]:
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    return load_file(run_dir / manifest["tensor_file"])


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
    ours, theirs = _final_adapters(tmp_path / "inprocess"), _final_adapters(tmp_path / "ray")
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
