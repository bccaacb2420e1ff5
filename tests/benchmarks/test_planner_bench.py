"""Planner benchmarks: planning end to end from a fleet file, the assignment MILP alone, and grouping quality.

Run with::

    .venv/bin/python -m pytest tests/benchmarks/test_planner_bench.py --benchmark-only -q -s
    .venv/bin/python -m pytest tests/benchmarks/test_planner_bench.py --benchmark-only -q -s -m slow  # 10k, 1M

Fleets are drawn with numpy (Dirichlet 0.5 label mixes over 26 classes, 40 samples a device, speeds 1..8x),
in K = N / 10 groups (the default). Every benchmark checks its result (every device in exactly one group, the
size, memory and budget bounds, status OPTIMAL or FEASIBLE). The end-to-end cases time loading the fleet file
and ``make_plan`` (and, at 1,000,000 devices, building and saving the fleet too) in CPU seconds, which a loaded
host changes little, and assert the issue's targets: 80 devices under 0.5 s, 10,000 under 10 s, 1,000,000
under 300 s and 8 GB peak RSS. The quality benchmark asserts that the flow grouping's objective is at most
(a) k-means-constrained cluster-then-deal's and (b) a greedy start plus one-for-one swap descent given the same
CPU seconds, and prints the ratios. ``extra_info`` holds the figures (CPU s, wall s, RSS, the load average).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from k_means_constrained import KMeansConstrained

from hierfedlora.planner import costs
from hierfedlora.planner.assignment import Assignment, assign_depths_and_rounds, evaluate_assignment
from hierfedlora.planner.fleet import load_fleet, save_fleet
from hierfedlora.planner.grouping import group_devices, grouping_objective, random_grouping
from hierfedlora.planner.outcomes import Grouping, Limit, Plan, SolveStatus
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.skew import label_skew
from hierfedlora.planner.types import DeviceProfile, Fleet, PlanningProblem, SolverOptions
from tests.factories import make_cost_model

pytestmark = [
    pytest.mark.benchmark,
    # flow reports FEASIBLE (its proven bound is weak), so make_plan warns that a gap is open
    pytest.mark.filterwarnings("ignore::hierfedlora.planner.errors.HierFedLoraWarning"),
]

NUM_CLASSES = 26
SEED = 0
RANDOM_SEEDS = range(5)


def _draw_devices(num_devices: int, seed: int = SEED) -> tuple[DeviceProfile, ...]:
    """A synthetic fleet drawn with numpy (module docstring): about 7 s per million devices."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(40, rng.dirichlet([0.5] * NUM_CLASSES, size=num_devices))
    counts[counts.sum(axis=1) == 0, 0] = 1
    scales = rng.choice([1.0, 2.0, 4.0, 8.0], size=num_devices).tolist()
    up = rng.choice([5.0, 20.0, 100.0], size=num_devices).tolist()
    down = rng.choice([20.0, 50.0, 200.0], size=num_devices).tolist()
    return tuple(
        DeviceProfile(
            device_id=f"d{i}",
            label_counts=tuple(c),
            compute_scale=sc,
            memory_bytes=2**31,
            uplink_mbps=u,
            downlink_mbps=d,
        )
        for i, (c, sc, u, d) in enumerate(zip(counts.tolist(), scales, up, down, strict=True))
    )


@functools.cache
def _fleet(num_devices: int) -> tuple[DeviceProfile, ...]:
    return _draw_devices(num_devices)


def _problem(num_devices: int, **solver: object) -> PlanningProblem:
    return PlanningProblem(
        devices=_fleet(num_devices),
        cost_model=make_cost_model(),
        num_groups=num_devices // 10,
        solver=SolverOptions(**solver),  # type: ignore[arg-type]
    )


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _check_partition(members: Sequence[Sequence[int]], num_devices: int, num_groups: int | None) -> None:
    """Every device in exactly one of ``num_groups`` groups of balanced size (floor..ceil of N / K)."""
    flat = sorted(int(i) for group in members for i in group)
    assert flat == list(range(num_devices)), "not every device in exactly one group"
    num_groups = num_groups or max(1, round(num_devices / 10))
    assert len(members) == num_groups
    sizes = {len(group) for group in members}
    assert min(sizes) >= num_devices // num_groups and max(sizes) <= math.ceil(num_devices / num_groups)


def _check_choices(problem: PlanningProblem, members: Sequence[Sequence[int]], depths, intra_rounds) -> None:
    """Depths and intra_rounds among the allowed choices; every member holds its group's depth."""
    batch = problem.effective_batch_size
    for group, depth, rounds in zip(members, depths, intra_rounds, strict=True):
        assert depth in problem.effective_depth_choices and rounds in problem.intra_rounds_choices
        need = costs.peak_memory_bytes(problem.cost_model, depth=depth, batch_size=batch)
        assert need <= min(problem.devices[i].memory_bytes for i in group)


def _check_plan(plan: Plan, problem: PlanningProblem) -> None:
    assert plan.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)
    assert (plan.limit is None) == (plan.status is SolveStatus.OPTIMAL)
    position = {d.device_id: i for i, d in enumerate(problem.devices)}
    members = [[position[device_id] for device_id in group.device_ids] for group in plan.groups]
    _check_partition(members, len(problem.devices), problem.num_groups)
    _check_choices(problem, members, [g.depth for g in plan.groups], [g.intra_rounds for g in plan.groups])
    assert math.isfinite(plan.objective_value) and plan.dual_bound <= plan.objective_value * (1 + 1e-9)


def _mean_kl(members: Sequence[Sequence[int]], counts: np.ndarray) -> float:
    """Unweighted mean over groups of KL(group's pooled labels || the fleet's), in nats."""
    total = counts.sum(axis=0)
    return float(np.mean([label_skew(counts[list(group)].sum(axis=0), total).kl for group in members]))


def _counts(problem: PlanningProblem) -> np.ndarray:
    return np.array([d.label_counts for d in problem.devices], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# 1. Planning time end to end
# ---------------------------------------------------------------------------------------------


_SAFETY_CAP_S = 86_400.0
"""The wall-clock cap of the end-to-end cases: a day, so that no loaded host can reach it before the work budget
(the cases assert the plan stopped on work, ``Limit.NODE``, so a cap that struck would fail them, not pass)."""


def _plan_from_file(path: Path, build: int | None = None) -> tuple[Plan, PlanningProblem, dict[str, float]]:
    """(Build and save a fleet of ``build`` devices, then) load ``path`` and plan it; CPU and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    if build is not None:
        fleet = Fleet(devices=_draw_devices(build), class_names=tuple(f"c{c}" for c in range(NUM_CLASSES)))
        save_fleet(path, fleet)
        del fleet
        gc.collect()
    fleet = load_fleet(path)
    solver = SolverOptions(time_limit_s=_SAFETY_CAP_S)  # a safety cap only: the search stops on its work budget
    problem = PlanningProblem(devices=fleet.devices, cost_model=make_cost_model(), solver=solver)
    plan = make_plan(problem)
    figures = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
    return plan, problem, figures


@pytest.mark.parametrize(
    ("num_devices", "target_cpu_s", "suffix", "build_inside"),
    [
        pytest.param(80, 0.5, ".json", False, id="80-json"),
        pytest.param(10_000, 10.0, ".npz", False, id="10000-npz", marks=pytest.mark.slow),
        pytest.param(1_000_000, 300.0, ".npz", True, id="1000000-npz-built-and-saved", marks=pytest.mark.slow),
    ],
)
def test_plan_from_a_fleet_file(benchmark, tmp_path, num_devices, target_cpu_s, suffix, build_inside):
    """Load a fleet file and ``make_plan`` it at the default K = N / 10 (at 1M also building and saving the
    fleet); a valid plan, within the issue's CPU-second target (and 8 GB peak RSS at 1M)."""
    # Arrange
    path = tmp_path / f"fleet{suffix}"
    if not build_inside:
        save_fleet(path, Fleet(devices=_fleet(num_devices), class_names=tuple(f"c{c}" for c in range(NUM_CLASSES))))
    # Act
    plan, problem, figures = benchmark.pedantic(
        _plan_from_file, args=(path, num_devices if build_inside else None), rounds=1, iterations=1
    )
    # Assert
    _check_plan(plan, problem)
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    benchmark.extra_info.update(
        figures, num_devices=num_devices, num_groups=len(plan.groups), target_cpu_s=target_cpu_s,
        peak_rss_gb=peak_rss_gb, objective_s=plan.objective_value, certified_gap=plan.relative_gap,
        grouping_objective=plan.grouping_objective, load_avg_1min=_load(),
        stopped_on=plan.limit.name if plan.limit is not None else "OPTIMAL",
    )  # fmt: skip
    print(f"\n{num_devices} devices: {figures['cpu_s']:.2f} CPU s, {figures['wall_s']:.2f} s wall, "
          f"peak RSS {peak_rss_gb:.2f} GB, gap {plan.relative_gap:.2%}, stopped on "
          f"{'work' if plan.limit is Limit.NODE else plan.limit}, load {_load()}")  # fmt: skip
    # the search stopped on its work budget (or a proof), never on the wall clock: the result is the host's
    # load's to change only if this fails
    assert plan.limit in (Limit.NODE, None), f"stopped by {plan.limit}, not by work"
    assert figures["cpu_s"] < target_cpu_s
    if num_devices >= 1_000_000:
        assert peak_rss_gb < 8.0


# ---------------------------------------------------------------------------------------------
# 2. The assignment MILP alone, 50 groups
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Fixed:
    problem: PlanningProblem
    grouping: Grouping
    free: Assignment


@pytest.fixture(scope="module")
def fifty_groups() -> _Fixed:
    """500 devices in a fixed flow grouping of 50 groups, and the assignment without a traffic budget."""
    problem = _problem(500, grouping_method="flow")
    grouping = group_devices(problem)
    return _Fixed(problem=problem, grouping=grouping, free=assign_depths_and_rounds(grouping, problem))


@pytest.mark.parametrize(
    "traffic_share", [None, 0.8, 0.6], ids=["no-traffic-budget", "traffic-0.8-of-free", "traffic-0.6-of-free"]
)
def test_assignment_time(benchmark, fifty_groups, traffic_share):
    """The assignment for 50 groups: the level sweep alone without a budget; Dinkelbach MILPs when traffic binds."""
    # Arrange
    grouping, problem = fifty_groups.grouping, fifty_groups.problem
    if traffic_share is not None:  # below what the unconstrained optimum moves, so (5) binds
        problem = dataclasses.replace(problem, traffic_budget_bytes=traffic_share * fifty_groups.free.traffic_bytes)
    # Act
    result = benchmark.pedantic(assign_depths_and_rounds, args=(grouping, problem), rounds=3, iterations=1)
    # Assert
    assert result.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)
    if traffic_share is None:
        assert result.method == "levels"
    else:
        assert result.method == "dinkelbach" and result.iterations >= 1  # the cvxpy/HiGHS MILP ran
        assert result.traffic_bytes <= problem.traffic_budget_bytes * (1 + 1e-6)
    _check_choices(problem, grouping.members, result.depths, result.intra_rounds)
    priced = evaluate_assignment(grouping, problem, result.depths, result.intra_rounds)
    assert priced == pytest.approx(result.objective_value, rel=1e-9)
    assert result.dual_bound <= result.objective_value * (1 + 1e-12)
    benchmark.extra_info.update(
        num_groups=len(grouping.members),
        traffic_budget_bytes=problem.traffic_budget_bytes,
        traffic_bytes=result.traffic_bytes,
        method=result.method,
        milp_iterations=result.iterations,
        status=result.status.name,
        objective_s=result.objective_value,
        relative_gap=result.relative_gap,
        load_avg_1min=_load(),
    )


# ---------------------------------------------------------------------------------------------
# 3. Grouping quality: mean group KL, ours against random and k-means-constrained
# ---------------------------------------------------------------------------------------------


def _kmeans_then_deal(problem: PlanningProblem, n_init: int) -> tuple[tuple[int, ...], ...]:
    """The peer: cluster label mixes into N / K clusters of near-equal size, then deal each across the K groups.

    Devices are taken cluster by cluster and dealt round-robin, so with equal cluster sizes every group
    receives one device of each kind (stratified sampling by k-means-constrained's clusters).
    """
    counts = _counts(problem)
    num_devices, num_groups = len(counts), problem.num_groups
    num_clusters = num_devices // num_groups
    clusters = KMeansConstrained(
        n_clusters=num_clusters,
        size_min=num_devices // num_clusters,
        size_max=math.ceil(num_devices / num_clusters),
        n_init=n_init,
        random_state=SEED,
    ).fit_predict(counts / counts.sum(axis=1, keepdims=True))
    order = np.argsort(clusters, kind="stable")
    group_of = np.empty(num_devices, dtype=np.int64)
    group_of[order] = np.arange(num_devices) % num_groups
    return tuple(tuple(int(i) for i in np.flatnonzero(group_of == k)) for k in range(num_groups))


def _greedy_then_swaps(problem: PlanningProblem, cpu_budget_s: float, seed: int = SEED) -> tuple[tuple[int, ...], ...]:
    """Peer (b): greedy start, then one-for-one swap descent until ``cpu_budget_s`` CPU seconds are spent.

    Greedy: devices largest first, each into the open group (balanced sizes) whose L1 residual it lowers most.
    Descent: a random device's best swap with any device of another group, applied when it lowers the
    objective (every swap of that device evaluated at once with numpy).
    """
    started = time.process_time()
    counts = _counts(problem).astype(np.float64)
    samples = counts.sum(axis=1)
    total, class_totals = samples.sum(), counts.sum(axis=0)
    excess = total * counts - np.outer(samples, class_totals)
    num_devices, num_groups = len(counts), problem.num_groups or max(1, round(len(counts) / 10))
    room = np.array([num_devices // num_groups + (k < num_devices % num_groups) for k in range(num_groups)])
    residual = np.zeros((num_groups, counts.shape[1]))
    group_of = np.empty(num_devices, dtype=np.int64)
    for i in np.argsort(-np.abs(excess).sum(axis=1), kind="stable"):
        gain = np.abs(residual + excess[i]).sum(axis=1) - np.abs(residual).sum(axis=1)
        gain[room == 0] = np.inf
        k = int(np.argmin(gain))
        group_of[i], room[k] = k, room[k] - 1
        residual[k] += excess[i]
    rng = np.random.default_rng(seed)
    while time.process_time() - started < cpu_budget_s:
        for i in rng.integers(num_devices, size=64):
            a = group_of[i]
            delta = excess - excess[i]  # r_a += E_j - E_i, r_b -= E_j - E_i
            cost = (np.abs(residual[a] + delta).sum(axis=1) + np.abs(residual[group_of] - delta).sum(axis=1)
                    - np.abs(residual[a]).sum() - np.abs(residual[group_of]).sum(axis=1))  # fmt: skip
            cost[group_of == a] = np.inf
            j = int(np.argmin(cost))
            if cost[j] < -0.5:
                b = group_of[j]
                residual[a] += excess[j] - excess[i]
                residual[b] -= excess[j] - excess[i]
                group_of[i], group_of[j] = b, a
    return tuple(tuple(int(i) for i in np.flatnonzero(group_of == k)) for k in range(num_groups))


# k-means-constrained's default n_init=10 takes about 3 minutes at 10,000 devices; one start takes ~18 s
_KMEANS_N_INIT = {80: 10, 1_000: 10, 10_000: 1}


@pytest.mark.parametrize(
    "num_devices",
    [80, 1_000, pytest.param(10_000, marks=pytest.mark.slow)],
)
def test_grouping_quality(benchmark, num_devices):
    """The flow grouping (default options: work-based stop) has an objective no higher than (a) k-means-constrained
    cluster-then-deal's and (b) greedy + one-for-one swap descent given the same CPU seconds; ratios printed."""
    # Arrange
    problem = _problem(num_devices, grouping_method="flow", time_limit_s=3600.0)
    counts = _counts(problem)
    # Act
    cpu = time.process_time()
    grouping = benchmark.pedantic(group_devices, args=(problem,), rounds=1, iterations=1)
    cpu_s = time.process_time() - cpu
    peers = {
        "kmeans-constrained": _kmeans_then_deal(problem, _KMEANS_N_INIT[num_devices]),
        "greedy+swaps": _greedy_then_swaps(problem, cpu_s),
    }
    # Assert
    _check_partition(grouping.members, num_devices, problem.num_groups)
    ratios = {}
    for name, members in peers.items():
        _check_partition(members, num_devices, problem.num_groups)
        ratios[name] = grouping.objective / grouping_objective(problem, members)
    random_kls = [_mean_kl(random_grouping(problem, seed).members, counts) for seed in RANDOM_SEEDS]
    benchmark.extra_info.update(
        num_devices=num_devices, num_groups=problem.num_groups, cpu_s=cpu_s, objective=grouping.objective,
        mean_kl=_mean_kl(grouping.members, counts), random_best_mean_kl=min(random_kls),
        **{f"ratio_to_{name}": ratio for name, ratio in ratios.items()}, load_avg_1min=_load(),
    )  # fmt: skip
    print(f"\n{num_devices} devices: flow objective {grouping.objective:.5g} in {cpu_s:.2f} CPU s; ratio to "
          + ", ".join(f"{name} {ratio:.3f}" for name, ratio in ratios.items()))  # fmt: skip
    assert all(ratio <= 1.0 for ratio in ratios.values()), ratios
