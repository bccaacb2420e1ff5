"""FedGSP as a baseline plan: groups that look like the population, sequential training inside a group,
and more groups as rounds go by (Zeng et al., "FedGSP", arXiv 2201.12976).

*Grouping.* FedGSP's inter-cluster grouping (ICG) forms groups whose pooled label distributions are
close to the population's, so that every group is a small copy of the whole fleet. That is the
criterion the planner's near-IID grouping optimises (``planner.grouping``: the total divergence of the
groups' label distributions from the global one), so this baseline reuses it, with the deterministic,
work-bounded ``flow`` method, ``num_groups = M_t`` and no size, sample or speed bounds. ICG itself
clusters devices and deals one device per cluster to each group, a heuristic for the same objective;
ours solves that objective directly (a choice: the same criterion, a stronger solver).

*Sequential training inside a group* (``Group.sequential``). In each round every group is a chain:
its devices train one after another in fleet order, device ``i`` starting from device ``i - 1``'s
adapters (``runtime.group_training``), and the group's model is the last device's. Groups train in
parallel, and the server merges them with the run's rule weighted by samples (FedAvg by default).
A sequential group's round lasts the *sum* of its devices' local steps and exchanges
(``planner.costs`` (C5), the clock's (K5)); the plan is priced with those formulas.

*Sequential to parallel.* The number of groups grows with the round: ``M_t = min(M_max, M_1 + (t - 1)
* step)``, ``M_1 = 1`` (one chain of every device), ``step = 1``, ``M_max`` the problem's
``num_groups`` (all devices when unset). FedGSP grows ``M_t`` with a schedule of its own choosing; we
take this linear one (a choice). :func:`fedgsp_plan` builds round ``t``'s plan;
:class:`FedgspReplanner` hands the runtime round ``t + 1``'s after round ``t``, deterministic in its
inputs, so a resumed run gets the same plans.

Simplified: every device trains at full depth with ``intra_rounds = 1``; predictions of rounds to
target use the convergence model (M1) as for a parallel group (it has no term for a chain).

Examples
--------
>>> from hierfedlora.planner.types import CostModel, DeviceProfile, PlanningProblem
>>> cost = CostModel(model_name="toy", num_layers=2, batch_size=1, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.5, 0.5), layer_backward_s=(1.0, 1.0),
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1_000_000, head_bytes=0,
...     activation_bytes_per_sample_per_layer=1, optimizer_bytes_per_layer=0,
...     base_model_bytes=1_000_000)
>>> devices = tuple(DeviceProfile(device_id=f"d{i}", label_counts=c, compute_scale=1.0,
...     memory_bytes=2**30, uplink_mbps=16.0, downlink_mbps=16.0)
...     for i, c in enumerate([(10, 0), (0, 10), (20, 0), (0, 20)]))
>>> problem = PlanningProblem(devices=devices, cost_model=cost, num_groups=2, local_steps=1,
...     intra_latency_s=0.0, global_latency_s=0.0, backhaul_mbps=8.0)
>>> [fedgsp_num_groups(problem, t) for t in (1, 2, 3)]
[1, 2, 2]
>>> plan = fedgsp_plan(problem, global_round=1)
>>> [(g.device_ids, g.sequential) for g in plan.groups]
[(('d0', 'd1', 'd2', 'd3'), True)]
>>> plan.groups[0].predicted_intra_round_s  # 4 devices x (3 s of local step + 2 s of exchange), in turn
20.0
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

from hierfedlora.planner.grouping import group_devices
from hierfedlora.planner.outcomes import Group, Plan, RoundReport
from hierfedlora.planner.types import PlanningProblem
from hierfedlora.validation.heterogeneous import constructed_plan, full_depth, priced_group

__all__ = ["FEDGSP_GROUPS_STEP", "FedgspReplanner", "fedgsp_num_groups", "fedgsp_plan"]

FEDGSP_GROUPS_STEP = 1
"""Groups added per round by the sequential-to-parallel schedule (from one group in round 1)."""


def fedgsp_num_groups(problem: PlanningProblem, global_round: int) -> int:
    """``M_t``: one group in round 1, ``FEDGSP_GROUPS_STEP`` more each round, at most ``num_groups`` (or N)."""
    cap = min(problem.num_groups or len(problem.devices), len(problem.devices))
    return min(cap, 1 + (global_round - 1) * FEDGSP_GROUPS_STEP)


def fedgsp_plan(
    problem: PlanningProblem,
    *,
    global_round: int,
    parent_plan_id: str | None = None,
    depth: int | None = None,
    note: str = "",
) -> Plan:
    """FedGSP's plan for ``global_round``: ``M_t`` near-IID groups, each a sequential chain at full depth.

    Raises
    ------
    InfeasibleError, NoSolutionError, SolverFailedError
        As ``planner.grouping.group_devices`` for ``M_t`` groups.
    """
    started = time.perf_counter()
    depth_note = note
    if depth is None:
        depth, depth_note = full_depth(problem)
    num_groups = fedgsp_num_groups(problem, global_round)
    if num_groups == 1:
        members: tuple[tuple[int, ...], ...] = (tuple(range(len(problem.devices))),)
    else:
        relaxed = dataclasses.replace(
            problem,
            num_groups=num_groups,
            min_group_size=None,
            max_group_size=None,
            min_group_samples=None,
            max_group_samples=None,
            max_speed_ratio=None,
            solver=dataclasses.replace(problem.solver, grouping_method="flow"),
        )
        members = tuple(tuple(sorted(m)) for m in group_devices(relaxed).members)
    groups = [_chain(problem, k, m, depth) for k, m in enumerate(members)]
    reason = (
        f"FedGSP-like: {num_groups} near-IID group(s) for global round {global_round} (one more each round, "
        f"at most {fedgsp_num_groups(problem, 10**9)}), devices train in sequence inside a group, depth {depth}, "
        f"intra_rounds 1{depth_note}"
    )
    plan = constructed_plan(problem, members, groups, method="fedgsp", reason=reason, started=started)
    return dataclasses.replace(plan, parent_plan_id=parent_plan_id)


@dataclasses.dataclass(frozen=True, slots=True)
class FedgspReplanner:
    """``runtime.engine.Replanner`` for FedGSP: after round ``t``, the plan of round ``t + 1`` (``M_{t+1}`` groups).

    Deterministic in its inputs (the round is read off the last report; the grouping is ``flow``), so a
    resumed run gets the same plan. It returns ``None`` once the number of groups stops growing.
    """

    problem: PlanningProblem

    def __call__(self, plan: Plan, reports: Sequence[RoundReport], plans: Mapping[str, Plan]) -> Plan | None:
        next_round = reports[-1].global_round + 1 if reports else 1
        if fedgsp_num_groups(self.problem, next_round) == len(plan.groups):
            return None
        return fedgsp_plan(self.problem, global_round=next_round, parent_plan_id=plan.plan_id)


def _chain(problem: PlanningProblem, group_id: int, members: Sequence[int], depth: int) -> Group:
    """A sequential group at ``depth``, priced by (C5) for a chain: the sum of its devices' times."""
    return priced_group(problem, group_id, members, depth=depth, sequential=True)
