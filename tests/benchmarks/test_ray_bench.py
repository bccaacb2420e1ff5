"""Wall time of an 80-device global round: the in-process executor against the Ray executor with 1 and 2 actors.

Run with::

    .venv/bin/python -m pytest tests/benchmarks/test_ray_bench.py --benchmark-only -q

The round is ``test_runtime_bench``'s: 80 WordNet devices (Dirichlet alpha 0.5, tier mix "paper", 40 samples
each), planned by ``make_plan`` into 4 groups on the toy cost model (2 local steps, batch 8, intra_rounds 1 or
2), the packaged model at 32 tokens, 128 evaluation samples; here with ``evaluate_groups=False``, so the driver
evaluates only the merged model and the round is mostly training, the part an executor changes. Each case runs
``run_plan`` for two global rounds into a fresh folder on a local Ray cluster of 2 CPUs (one started for the
module): round 1 fills each process's prefix cache, round 2 is warm. Reported per case: both rounds' wall
seconds (``RoundReport.wall_time_s``: training, aggregation and evaluation, not the commit), the driver's CPU
seconds and the actors' (from ``/proc``), the executor's start-up seconds (actors loading the model and
tokenizing their rows), and the 1-minute load average before and after. The in-process case prepares its own
full context; the Ray cases a driver context with evaluation rows only.

Each benchmark checks its result: two committed rounds, 80 devices' step times, finite losses, and final
adapters equal to the in-process run's, bit for bit. Times are only reported, never asserted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hierfedlora.commands.fleet import load_data
from hierfedlora.planner.fleet import make_fleet
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.types import CostModel, Fleet, PlanningProblem, SolverOptions
from hierfedlora.runtime.checkpoint import MANIFEST_NAME
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.options import RunOptions
from tests.factories import make_cost_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.benchmark,
    pytest.mark.ray,
    pytest.mark.filterwarnings("ignore::hierfedlora.planner.errors.HierFedLoraWarning"),
]

NUM_DEVICES, NUM_GROUPS, SAMPLES_PER_DEVICE, SEED, ROUNDS = 80, 4, 40, 0, 2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Setup:
    fleet: Fleet
    plan: Plan
    cost_model: CostModel
    options: RunOptions
    folder: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """The 80-device fleet, its 4-group plan and the run options; a local 2-CPU Ray for the module."""
    ray = pytest.importorskip("ray")
    fleet = make_fleet(
        load_data("wordnet", "text", "label"),
        num_devices=NUM_DEVICES,
        partition="dirichlet",
        alpha=0.5,
        tier_mix="paper",
        max_samples_per_device=SAMPLES_PER_DEVICE,
        seed=SEED,
    )
    cost_model = make_cost_model()
    problem = PlanningProblem(
        devices=fleet.devices,
        cost_model=cost_model,
        num_groups=NUM_GROUPS,
        local_steps=2,
        batch_size=8,
        intra_rounds_choices=(1, 2),
        solver=SolverOptions(time_limit_s=5.0, seed=SEED),
    )
    # batched_devices=1: actors train device by device, so the in-process case does too (the same computation,
    # compared bit for bit)
    options = RunOptions(
        rounds=ROUNDS, max_seq_len=32, eval_samples=128, evaluate_groups=False, seed=SEED, batched_devices=1
    )
    temp_dir = tempfile.mkdtemp(prefix="hfl-ray-")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=temp_dir)
        try:
            yield Setup(fleet, make_plan(problem), cost_model, options, tmp_path_factory.mktemp("ray-bench"))
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (same host)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _final_adapters(run_dir: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    return load_file(run_dir / manifest["tensor_file"])


def _run_case(setup: Setup, num_actors: int | None) -> dict:
    """One case: start its executor, run two rounds; the figures and the run folder."""
    from hierfedlora.runtime.executors.ray import RayExecutor

    name = "inprocess" if num_actors is None else f"ray_{num_actors}_actors"
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    executor, pids = None, ()
    if num_actors is None:
        context = prepare_run(setup.plan, setup.fleet, setup.options)
    else:
        context = prepare_run(setup.plan, setup.fleet, setup.options, device_ids=())
        executor = RayExecutor(setup.plan, setup.fleet, setup.options, setup.cost_model, num_actors=num_actors)
        pids = executor.actor_pids
    startup_s = time.perf_counter() - started
    cpu_before, actors_before = time.process_time(), [_cpu_s(pid) for pid in pids]
    try:
        reports = list(
            run_plan(
                setup.plan,
                setup.fleet,
                setup.cost_model,
                setup.options,
                setup.folder / name,
                context=context,
                executor=executor,
            )
        )
        actors_cpu_s = sum(_cpu_s(pid) - before for pid, before in zip(pids, actors_before, strict=True))
    finally:
        if executor is not None:
            executor.close()
    assert [r.global_round for r in reports] == list(range(1, ROUNDS + 1))
    assert all(len(r.measured_step_s) == NUM_DEVICES for r in reports)
    assert all(math.isfinite(g.loss) for r in reports for g in r.groups)
    return {
        "case": name,
        "startup_s": round(startup_s, 2),
        "round_wall_s": [round(r.wall_time_s, 2) for r in reports],
        "driver_cpu_s": round(time.process_time() - cpu_before, 1),
        "actors_cpu_s": round(actors_cpu_s, 1),
        "load_avg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "depths": [g.depth for g in setup.plan.groups],
        "intra_rounds": [g.intra_rounds for g in setup.plan.groups],
    }


def test_an_80_device_round_in_process_and_on_1_and_2_ray_actors(benchmark, setup):
    """Round wall seconds of each case (warm round 2 is the figure); adapters equal in every case."""
    cases: list[dict] = []

    def run_all() -> None:
        cases.extend(_run_case(setup, actors) for actors in (None, 1, 2))

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    reference = _final_adapters(setup.folder / "inprocess")
    for case in cases[1:]:
        theirs = _final_adapters(setup.folder / case["case"])
        assert all(torch.equal(reference[k], theirs[k]) for k in reference), case["case"]
    baseline = cases[0]["round_wall_s"][-1]
    for case in cases:
        case["warm_round_speedup_vs_inprocess"] = round(baseline / case["round_wall_s"][-1], 2)
    benchmark.extra_info["cases"] = cases
    print(json.dumps(cases, indent=1))  # the figures, shown with -s
