"""The assignment's data, built once and vectorised: one row per group, one column per choice.

:func:`build_assignment_data` turns a :class:`Grouping` and a :class:`PlanningProblem` into the
numbers of the formulation in :mod:`hierfedlora.planner.assignment` (its "Data" block):
choice ``c = (d, tau)`` runs over ``depth_choices x intra_rounds_choices`` depth-major
(``c = j * |tau choices| + m``), so column order is (smallest depth, fewest rounds) first.

:func:`evaluate_assignment` prices any choice per group device by device with the scalar
formulas instead, independently of these tables (brute force, the verifier and baselines use it).

Everything is numpy over the fleet: ``costs.step_time_table_s`` and
``costs.exchange_time_table_s`` give an ``(N, |D|)`` table, and ``np.maximum.reduceat`` takes
the slowest member per group, so 10,000 devices in 1,000 groups build in milliseconds.

Examples
--------
>>> from hierfedlora.planner.outcomes import Grouping, SolveStatus
>>> from hierfedlora.planner.types import CostModel, DeviceProfile, PlanningProblem
>>> cost = CostModel(model_name="toy", num_layers=2, batch_size=1, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.5, 0.5), layer_backward_s=(1.0, 1.0),
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1_000_000, head_bytes=0,
...     activation_bytes_per_sample_per_layer=1, optimizer_bytes_per_layer=0,
...     base_model_bytes=1_000_000)
>>> devices = tuple(DeviceProfile(device_id=f"d{i}", label_counts=c, compute_scale=1.0,
...     memory_bytes=2**30, uplink_mbps=16.0, downlink_mbps=16.0)
...     for i, c in enumerate([(10, 0), (0, 10), (20, 0), (0, 20)]))
>>> problem = PlanningProblem(devices=devices, cost_model=cost, depth_choices=(1, 2),
...     intra_rounds_choices=(1, 2), local_steps=1, intra_latency_s=0.0)
>>> grouping = Grouping(members=((0, 1), (2, 3)), objective=0.0, bound=0.0,
...     status=SolveStatus.OPTIMAL, limit=None, solve_time_s=0.0, method="manual")
>>> data = build_assignment_data(grouping, problem)
>>> data.intra_round_s.tolist()  # t_k(d) = (1 + d) s of compute + d s of exchange
[[3.0, 5.0], [3.0, 5.0]]
>>> data.round_part_s[0].tolist()  # tau * t_k(d) for (1,1), (1,2), (2,1), (2,2)
[3.0, 6.0, 5.0, 10.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner import convergence, costs, rule_costs, skew
from hierfedlora.planner.checks import BUDGET_TOLERANCE
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.outcomes import Grouping
from hierfedlora.planner.types import PlanningProblem

__all__ = ["AssignmentData", "Evaluation", "build_assignment_data", "check_grouping", "evaluate_assignment"]

FloatArray = NDArray[np.float64]


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluation:
    """What one choice per group costs and gains: (C7) parts, (M1) total, (C8) total."""

    round_part_s: float  # T = max_k tau_k * t_k(d_k)
    global_s: float  # t_glob = (C6) at the deepest group's depth
    total_progress: float  # sum_k p_k
    traffic_bytes: float  # sum_k traffic_k

    @property
    def round_time_s(self) -> float:
        """(C7) ``T + t_glob``."""
        return self.round_part_s + self.global_s

    @property
    def ratio_s(self) -> float:
        """``(T + t_glob) / sum_k p_k``: seconds per unit of progress (time to target / R0)."""
        return self.round_time_s / self.total_progress


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class AssignmentData:
    """The formulation's data: ``K`` groups (rows) by ``C`` choices (columns)."""

    depths: tuple[int, ...]  # D, sorted
    intra_rounds: tuple[int, ...]  # tau choices, sorted
    choice_depth_idx: NDArray[np.int64]  # (C,) j of choice c
    choice_depth: NDArray[np.int64]  # (C,) d of choice c
    choice_rounds: NDArray[np.int64]  # (C,) tau of choice c
    group_sizes: NDArray[np.int64]  # (K,) |k|
    share: FloatArray  # (K,) w_k
    skew_tv: FloatArray  # (K,) delta_k
    group_memory_bytes: NDArray[np.int64]  # (K,) smallest member's memory
    memory_need_bytes: NDArray[np.int64]  # (|D|,) (C4) mem(d)
    intra_round_s: FloatArray  # (K, |D|) (C5) t_k(d)
    round_part_s: FloatArray  # (K, C) tau * t_k(d)
    global_by_depth_s: FloatArray  # (|D|,) (C6) for one group at depth d
    global_s: FloatArray  # (C,) (C6) at choice c's depth
    fits: NDArray[np.bool_]  # (K, C) every member holds depth d
    traffic_bytes: FloatArray  # (K, C) (C8)
    progress: FloatArray  # (K, C) (M1) p_kc
    round_budget_s: float | None
    traffic_budget_bytes: float | None
    reference_rounds: float  # R0

    @property
    def num_groups(self) -> int:
        return int(self.round_part_s.shape[0])

    @property
    def num_choices(self) -> int:
        return int(self.round_part_s.shape[1])

    @property
    def size_text(self) -> str:
        """The problem's size in words, for error messages."""
        num_groups, num_choices = self.num_groups, self.num_choices
        return f"{num_groups} groups x {num_choices} choices ({num_groups * num_choices} binaries)"

    @property
    def round_limit_s(self) -> float | None:
        """The round budget (4) with :data:`~hierfedlora.planner.checks.BUDGET_TOLERANCE`, or None."""
        return None if self.round_budget_s is None else self.round_budget_s * (1 + BUDGET_TOLERANCE)

    @property
    def traffic_limit_bytes(self) -> float | None:
        """The traffic budget (5) with :data:`~hierfedlora.planner.checks.BUDGET_TOLERANCE`, or None."""
        return None if self.traffic_budget_bytes is None else self.traffic_budget_bytes * (1 + BUDGET_TOLERANCE)

    def choice_index(self, depth: int, intra_rounds: int) -> int:
        """Column of ``(depth, intra_rounds)``."""
        return self.depths.index(depth) * len(self.intra_rounds) + self.intra_rounds.index(intra_rounds)

    def evaluate(self, choices: NDArray[np.int64]) -> Evaluation:
        """Cost and progress of choice ``choices[k]`` for every group ``k`` (one column per group)."""
        rows = np.arange(self.num_groups)
        return Evaluation(
            round_part_s=float(self.round_part_s[rows, choices].max()),
            global_s=float(self.global_s[choices].max()),
            total_progress=float(self.progress[rows, choices].sum()),
            traffic_bytes=float(self.traffic_bytes[rows, choices].sum()),
        )

    def fastest_round_s(self, usable: NDArray[np.bool_]) -> float:
        """``min over depth caps D of (max_k min_c tau t_k(d)) + t_glob(D)``, over ``usable`` choices.

        No choice of ``usable`` columns has a shorter global round (``inf`` if none exists).
        """
        fastest = float("inf")
        for cap_idx, global_s in enumerate(self.global_by_depth_s):
            allowed = usable & (self.choice_depth_idx <= cap_idx)[None, :]
            if allowed.any(axis=1).all():
                slowest = float(np.where(allowed, self.round_part_s, np.inf).min(axis=1).max())
                fastest = min(fastest, slowest + float(global_s))
        return fastest

    def satisfies(self, choices: NDArray[np.int64]) -> bool:
        """True if ``choices`` meets (2) memory, (4) the round budget and (5) the traffic budget.

        Budgets count as met within :data:`~hierfedlora.planner.checks.BUDGET_TOLERANCE`.
        """
        rows = np.arange(self.num_groups)
        result = self.evaluate(choices)
        return bool(
            self.fits[rows, choices].all()
            and (self.round_limit_s is None or result.round_time_s <= self.round_limit_s)
            and (self.traffic_limit_bytes is None or result.traffic_bytes <= self.traffic_limit_bytes)
        )


def check_grouping(members: Sequence[Sequence[int]], num_devices: int) -> list[Issue]:
    """Issues if ``members`` is not a partition of ``range(num_devices)`` into non-empty groups."""
    issues = []
    seen: dict[int, int] = {}
    for k, group in enumerate(members):
        if len(group) == 0:
            issues.append(Issue(f"members[{k}]", "a non-empty list of device positions", tuple(group)))
        for position in group:
            if not (isinstance(position, int | np.integer) and 0 <= position < num_devices):
                issues.append(Issue(f"members[{k}]", f"device positions in 0..{num_devices - 1}", position))
            elif position in seen:
                issues.append(
                    Issue(f"members[{k}]", f"each device in one group (also in members[{seen[position]}])", position)
                )
            else:
                seen[int(position)] = k
    if not issues and len(seen) != num_devices:
        missing = sorted(set(range(num_devices)) - set(seen))
        issues.append(
            Issue("members", f"every device position 0..{num_devices - 1} in some group", f"missing {missing[:5]}")
        )
    return issues


def build_assignment_data(
    grouping: Grouping, problem: PlanningProblem, *, skew_tv: Sequence[float] | None = None
) -> AssignmentData:
    """The Data block of the formulation, for every group and choice at once.

    ``skew_tv`` replaces the groups' skews delta_k (their pooled labels' total variation from the
    fleet's) by given values in [0, 1]: lower bounds price hypothetical skews with it.

    Raises
    ------
    InvalidInputError
        If ``grouping.members`` is not a partition of the problem's devices (paths start
        with ``grouping.``).
    """
    issues = check_grouping(grouping.members, len(problem.devices))
    if issues:
        raise InvalidInputError(issues).with_prefix("grouping")
    cost, batch = problem.cost_model, problem.effective_batch_size
    depths, rounds = problem.effective_depth_choices, tuple(sorted(problem.intra_rounds_choices))
    devices = problem.devices
    positions = np.concatenate([np.asarray(group, dtype=np.int64) for group in grouping.members])
    sizes = np.array([len(group) for group in grouping.members], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))

    # (C9) one exchange's (up, down) bytes per group and depth under the rule (FLoRA stacks |k| inputs)
    pairs, size_idx = _group_bytes(problem, sizes)

    # (C5) t_k(d): the slowest member's local steps plus its exchange, per depth
    scales = np.array([d.compute_scale for d in devices])
    uplink = np.array([d.uplink_mbps for d in devices])[positions]
    downlink = np.array([d.downlink_mbps for d in devices])[positions]
    device_s = problem.local_steps * costs.step_time_table_s(cost, scales, depths, batch)[positions]
    device_s = device_s + _exchange_s(problem, uplink, downlink, sizes, pairs, size_idx)
    intra_round_s = np.maximum.reduceat(device_s, starts, axis=0)

    # (C4) memory: the group's smallest member must hold depth d
    memory = np.array([d.memory_bytes for d in devices], dtype=np.int64)
    group_memory = np.minimum.reduceat(memory[positions], starts)
    need = np.array([costs.peak_memory_bytes(cost, depth=d, batch_size=batch) for d in depths], dtype=np.int64)

    # (M1) share w_k and skew delta_k of each group's pooled labels
    counts = np.array([d.label_counts for d in devices], dtype=np.int64)
    group_counts = np.add.reduceat(counts[positions], starts, axis=0)
    share = group_counts.sum(axis=1) / counts.sum()
    global_counts = counts.sum(axis=0)
    if skew_tv is None:
        skew_tv = np.array([skew.total_variation(row, global_counts) for row in group_counts])
    else:
        skew_tv = np.asarray(skew_tv, dtype=float)
        if skew_tv.shape != (len(sizes),) or not np.all((skew_tv >= 0) & (skew_tv <= 1)):
            raise InvalidInputError([Issue("skew_tv", f"one number in [0, 1] per group ({len(sizes)})", skew_tv)])

    choice_depth_idx = np.repeat(np.arange(len(depths)), len(rounds))
    choice_depth = np.asarray(depths, dtype=np.int64)[choice_depth_idx]
    choice_rounds = np.tile(np.asarray(rounds, dtype=np.int64), len(depths))
    params = problem.convergence
    depth_gain = np.array([convergence.depth_factor(d, cost.num_layers, params.depth_exponent) for d in depths])
    rounds_gain = convergence.intra_rounds_factor(choice_rounds[None, :], skew_tv[:, None], params.skew_sensitivity)
    # (C6) at depth cap d: K aggregators queue on the server link (FLoRA's server stacks K groups)
    global_by_depth = np.array([rule_costs.predicted_global_aggregation_s(problem, [d] * len(sizes)) for d in depths])
    exchanged = pairs.sum(axis=2).astype(float)[size_idx]  # (K, |D|) one exchange, up plus down
    return AssignmentData(
        depths=depths,
        intra_rounds=rounds,
        choice_depth_idx=choice_depth_idx,
        choice_depth=choice_depth,
        choice_rounds=choice_rounds,
        group_sizes=sizes,
        share=share,
        skew_tv=skew_tv,
        group_memory_bytes=group_memory,
        memory_need_bytes=need,
        intra_round_s=intra_round_s,
        round_part_s=intra_round_s[:, choice_depth_idx] * choice_rounds[None, :],
        global_by_depth_s=global_by_depth,
        global_s=global_by_depth[choice_depth_idx],
        fits=(group_memory[:, None] >= need[None, :])[:, choice_depth_idx],
        # (C8) traffic_k = tau * |k| * (up + down), 2 * bytes(d) under FedAvg
        traffic_bytes=choice_rounds[None, :] * sizes[:, None] * exchanged[:, choice_depth_idx],
        progress=share[:, None] * depth_gain[choice_depth_idx][None, :] * rounds_gain,
        round_budget_s=problem.round_budget_s,
        traffic_budget_bytes=problem.traffic_budget_bytes,
        reference_rounds=params.target_rounds,
    )


def _group_bytes(problem: PlanningProblem, sizes: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(C9) bytes of one intra-group exchange: ``pairs[s, j] = (up, down)`` for the ``s``-th distinct group
    size at depth ``j`` (group ``k`` stacks ``|k|`` inputs), and each group's ``s``.

    Priced once per distinct group size (balanced groups have one or two).
    """
    distinct, size_idx = np.unique(sizes, return_inverse=True)
    pairs = np.array(
        [
            [
                rule_costs.problem_exchange_bytes(problem, depth=d, num_inputs=int(n))
                for d in problem.effective_depth_choices
            ]
            for n in distinct
        ],
        dtype=np.int64,
    )
    return pairs, np.asarray(size_idx).reshape(-1)


def _exchange_s(
    problem: PlanningProblem,
    uplink: FloatArray,
    downlink: FloatArray,
    sizes: NDArray[np.int64],
    pairs: NDArray[np.int64],
    size_idx: NDArray[np.int64],
) -> FloatArray:
    """(C3) of every device (rows in group order) at every depth, with its group's (C9) bytes ``pairs``."""
    cost, depths, latency = problem.cost_model, problem.effective_depth_choices, problem.intra_latency_s

    def table(rows: slice | NDArray[np.bool_], size: int) -> FloatArray:
        up, down = pairs[size, :, 0], pairs[size, :, 1]
        symmetric = np.array_equal(up, down)
        return costs.exchange_time_table_s(
            cost,
            uplink[rows],
            downlink[rows],
            depths,
            latency,
            num_bytes=up.tolist(),
            download_bytes=None if symmetric else down.tolist(),
        )

    if (pairs == pairs[0]).all():  # every group moves the same bytes (all rules but FLoRA): one table
        return table(slice(None), 0)
    member_size = np.repeat(size_idx, sizes)  # the size class of each row
    result = np.empty((len(member_size), len(depths)))
    for size in range(len(pairs)):
        rows = member_size == size
        result[rows] = table(rows, size)
    return result


def evaluate_assignment(
    grouping: Grouping, problem: PlanningProblem, depths: Sequence[int], intra_rounds: Sequence[int]
) -> float:
    """Predicted time to target (seconds) of any depth and intra_rounds per group.

    Computed device by device with the scalar formulas of ``costs.py`` and
    ``convergence.py``, independently of the MILP's tables, so brute force, the verifier
    and the baselines can price any choice. Memory and budgets are *not* checked here.

    Raises
    ------
    InvalidInputError
        If ``grouping`` is not a partition of the devices, or ``depths`` / ``intra_rounds``
        do not hold one valid value per group.
    """
    num_groups, num_layers = len(grouping.members), problem.cost_model.num_layers
    issues = [issue.with_prefix("grouping") for issue in check_grouping(grouping.members, len(problem.devices))]
    if len(depths) != num_groups or not all(isinstance(d, int) and 1 <= d <= num_layers for d in depths):
        issues.append(Issue("depths", f"one depth in 1..{num_layers} per group ({num_groups})", tuple(depths)))
    if len(intra_rounds) != num_groups or not all(isinstance(t, int) and t >= 1 for t in intra_rounds):
        issues.append(Issue("intra_rounds", f"one integer >= 1 per group ({num_groups})", tuple(intra_rounds)))
    if issues:
        raise InvalidInputError(issues)
    cost, devices, params = problem.cost_model, problem.devices, problem.convergence
    global_counts = np.sum([d.label_counts for d in devices], axis=0)
    total_samples = int(global_counts.sum())
    intra_round_s, total_progress = [], 0.0
    for members, depth, rounds in zip(grouping.members, depths, intra_rounds, strict=True):
        group = [devices[i] for i in members]
        up, down = rule_costs.problem_exchange_bytes(problem, depth=depth, num_inputs=len(members))
        intra_round_s.append(
            costs.intra_round_time_s(
                cost,
                group,
                depth=depth,
                local_steps=problem.local_steps,
                batch_size=problem.effective_batch_size,
                latency_s=problem.intra_latency_s,
                num_bytes=up,
                download_bytes=None if up == down else down,
            )
        )
        group_counts = np.sum([d.label_counts for d in group], axis=0)
        total_progress += convergence.group_progress(
            share=float(group_counts.sum()) / total_samples,
            depth=depth,
            num_layers=num_layers,
            intra_rounds=rounds,
            skew_tv=skew.total_variation(group_counts, global_counts),
            params=params,
        )
    global_s = rule_costs.predicted_global_aggregation_s(problem, list(depths))
    round_s = costs.round_time_s(intra_round_s, intra_rounds, global_s)
    return float(convergence.rounds_to_target(total_progress, params) * round_s)
