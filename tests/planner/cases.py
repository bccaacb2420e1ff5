"""Known-answer catalogue: tiny planning problems whose optimum is derived by hand.

Every case shares one toy model and four devices, chosen so every number is small and exact:

- Cost model: 2 layers, batch 1, forward 0.5 s per layer, LoRA backward 1 s per layer, no
  embedding, head or optimizer time; 1,000,000 adapter bytes per layer, no head bytes; base
  model 1,000,000 bytes, 1 activation byte. So (C1) step(d) = s (1 + d) s; (C2) bytes(d) = d MB;
  (C3) with 16 Mbps up and down and no latency, exchange(d) = 8d/16 + 8d/16 = d s;
  (C4) mem(d) = 1,000,000 + 1,000,000 d + (d + 1) bytes: 2,000,002 at depth 1, 3,000,003 at 2.
- One local step: (C5) t(d) = s (1 + d) + d, so t(1) = 3 s and t(2) = 5 s at s = 1.
- Backhaul 8 Mbps, no global latency: (C6) t_glob(d) = 2 * 8d / 8 = 2d s.
- Devices d0 (10, 0), d1 (0, 10), d2 (20, 0), d3 (0, 20) in two groups of two. Only the pairing
  {d0, d1}, {d2, d3} gives both groups the fleet's 50/50 mix (skew 0), so every grouping method
  must find it. Shares w = 1/3 and 2/3, delta = 0.
- Convergence: beta = 1, R0 = 10: (M1) p = w (d / 2) tau.

A choice (d, tau) per group costs tau t(d) of the round and earns w (d / 2) tau:

    (d, tau)   tau t(d) at s=1   p for w=1/3   p for w=2/3   traffic per group (2 devices)
    (1, 1)      3                1/6           1/3            4 MB
    (1, 2)      6                1/3           2/3            8 MB
    (2, 1)      5                1/3           2/3            8 MB
    (2, 2)     10                2/3           4/3           16 MB

Time to target = R0 (T + t_glob) / sum p, with T the largest tau t(d) and t_glob set by the
deepest group. Each case below derives its optimum from this table.
"""

from __future__ import annotations

import dataclasses

from hierfedlora.planner.outcomes import Grouping, SolveStatus
from hierfedlora.planner.types import ConvergenceParams, CostModel, DeviceProfile, PlanningProblem, SolverOptions

__all__ = ["CASES", "ExpectedGroup", "PlannerCase", "toy_problem"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExpectedGroup:
    """One group of a known optimum."""

    device_ids: tuple[str, ...]
    depth: int
    intra_rounds: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PlannerCase:
    """A problem, its hand-derived optimum, and why.

    ``expected_objective`` is the predicted time to target in seconds, or ``None`` when the
    problem is infeasible; then ``conflicting`` holds the families the error must name.
    ``members`` is the grouping every method must find (unique by construction).
    """

    name: str
    problem: PlanningProblem
    expected_objective: float | None
    expected_groups: tuple[ExpectedGroup, ...]
    note: str
    members: tuple[tuple[str, ...], ...] = (("d0", "d1"), ("d2", "d3"))
    conflicting: tuple[str, ...] = ()

    def grouping(self) -> Grouping:
        """``members`` as the :class:`Grouping` the assignment takes (positions into the devices)."""
        position = {device.device_id: idx for idx, device in enumerate(self.problem.devices)}
        return Grouping(
            members=tuple(tuple(sorted(position[d] for d in group)) for group in self.members),
            objective=0.0,
            bound=0.0,
            status=SolveStatus.OPTIMAL,
            limit=None,
            solve_time_s=0.0,
            method="known",
        )


TOY_COST = CostModel(
    model_name="toy-cases",
    model_sha256="c" * 64,
    num_layers=2,
    batch_size=1,
    seq_len=8,
    embedding_forward_s=0.0,
    layer_forward_s=(0.5, 0.5),
    layer_backward_s=(1.0, 1.0),
    head_step_s=0.0,
    layer_optimizer_s=0.0,
    adapter_bytes_per_layer=1_000_000,
    head_bytes=0,
    activation_bytes_per_sample_per_layer=1,
    optimizer_bytes_per_layer=0,
    base_model_bytes=1_000_000,
)


def toy_devices(*, memory_bytes: tuple[int, ...] = (2**30,) * 4, scales: tuple[float, ...] = (1.0,) * 4):
    counts = ((10, 0), (0, 10), (20, 0), (0, 20))
    return tuple(
        DeviceProfile(
            device_id=f"d{idx}",
            label_counts=label_counts,
            compute_scale=scale,
            memory_bytes=memory,
            uplink_mbps=16.0,
            downlink_mbps=16.0,
        )
        for idx, (label_counts, memory, scale) in enumerate(zip(counts, memory_bytes, scales, strict=True))
    )


def toy_problem(**changes: object) -> PlanningProblem:
    """The catalogue's problem, with ``changes`` applied (any :class:`PlanningProblem` field)."""
    problem = PlanningProblem(
        devices=toy_devices(),
        cost_model=TOY_COST,
        num_groups=2,
        min_group_size=2,
        max_group_size=2,
        depth_choices=(1, 2),
        intra_rounds_choices=(1, 2),
        local_steps=1,
        intra_latency_s=0.0,
        global_latency_s=0.0,
        backhaul_mbps=8.0,
        convergence=ConvergenceParams(depth_exponent=1.0, skew_sensitivity=4.0, reference_rounds=10.0),
        solver=SolverOptions(time_limit_s=20.0, seed=0),
    )
    return dataclasses.replace(problem, **changes)


def _both(depth: int, intra_rounds: int) -> tuple[ExpectedGroup, ...]:
    return (
        ExpectedGroup(device_ids=("d0", "d1"), depth=depth, intra_rounds=intra_rounds),
        ExpectedGroup(device_ids=("d2", "d3"), depth=depth, intra_rounds=intra_rounds),
    )


CASES: tuple[PlannerCase, ...] = (
    # All choices open. With every group at one choice, sum w = 1, so the ratio is
    # (tau t(d) + 2d) / ((d / 2) tau): (1,1) 5/0.5 = 10, (1,2) 8/1 = 8, (2,1) 9/1 = 9,
    # (2,2) 14/2 = 7. Mixing never helps: T and t_glob are set by the slowest and deepest
    # group, so a group below both maxima only loses progress. Optimum 10 * 7 = 70 s.
    PlannerCase(
        name="base",
        problem=toy_problem(),
        expected_objective=70.0,
        expected_groups=_both(2, 2),
        note="deep and frequent wins when nothing binds",
    ),
    # d0 and d1 hold 2,500,000 bytes: depth 2 (3,000,003) does not fit group {d0, d1}.
    # Keep {d2, d3} at (2,2): T = 10, t_glob = 4, p = 1/3 + 4/3 = 5/3 -> 14 / (5/3) = 8.4.
    # (2,1) beside (1,2): T = 6, t_glob = 4, p = 2/3 + 1/3 = 1 -> 10. Both at (1,2): T = 6,
    # t_glob = 2, p = 1/3 + 2/3 = 1 -> 8. Both at (1,1): 5 / 0.5 = 10. Optimum 10 * 8 = 80 s:
    # memory on one group pulls the other group shallow too (t_glob follows the deepest).
    PlannerCase(
        name="memory_forces_depth_1",
        problem=toy_problem(devices=toy_devices(memory_bytes=(2_500_000, 2_500_000, 2**30, 2**30))),
        expected_objective=80.0,
        expected_groups=_both(1, 2),
        note="a shallow group makes the deep one shallow as well",
    ),
    # round_budget_s = 12 forbids (2,2) in any group (10 + 4 = 14 > 12). With t_glob = 4
    # (a depth-2 group): T <= 6 gives p = 1 at best -> (6 + 4) / 1 = 10; T = 5 (both (2,1))
    # -> 9. With t_glob = 2: both (1,2) -> (6 + 2) / 1 = 8, round 8 s <= 12. Optimum 80 s.
    PlannerCase(
        name="round_budget_forbids_deep_frequent",
        problem=toy_problem(round_budget_s=12.0),
        expected_objective=80.0,
        expected_groups=_both(1, 2),
        note="the budget removes the unconstrained optimum (2,2)",
    ),
    # traffic_budget_bytes = 20 MB; a group moves 4 MB at (1,1), 8 MB at (1,2) or (2,1),
    # 16 MB at (2,2). Both (2,2) = 32 MB is out; (2,2) + (1,1) = 20 MB: {d2,d3} at (2,2)
    # gives 14 / (4/3 + 1/6) = 9.33, the other way round 14 / 1 = 14; 16 MB pairs: both
    # (1,2) -> 8, both (2,1) -> 9, mixed -> 10. Optimum 80 s; the relaxation without the
    # budget (70 s) is cut off, so the MILP path runs.
    PlannerCase(
        name="traffic_budget_binds",
        problem=toy_problem(traffic_budget_bytes=20e6),
        expected_objective=80.0,
        expected_groups=_both(1, 2),
        note="exercises the Dinkelbach MILP",
    ),
    # d2 and d3 are twice as slow: their t(1) = 2 * 2 + 1 = 5, t(2) = 2 * 3 + 2 = 8, so
    # {d2, d3} at (2,2) takes 16 s. Both (2,2): (16 + 4) / 2 = 10. T = 10 (slow group (1,2)
    # or (2,1), p = 2/3; fast group (2,2), p = 2/3): 14 / (4/3) = 10.5. T = 8 (slow (2,1),
    # fast (1,2) or (2,1)): 12 / 1 = 12. Depth 1 only: T = 10 -> 12 / 1 = 12. Optimum 100 s.
    PlannerCase(
        name="slow_group_sets_the_round",
        problem=toy_problem(devices=toy_devices(scales=(1.0, 1.0, 2.0, 2.0))),
        expected_objective=100.0,
        expected_groups=_both(2, 2),
        note="the slow group sets T; the fast one still takes its best choice under it",
    ),
    # The fastest round is both groups at (1,1): 3 + 2 = 5 s > round_budget_s = 4.5.
    PlannerCase(
        name="round_budget_infeasible",
        problem=toy_problem(round_budget_s=4.5),
        expected_objective=None,
        expected_groups=(),
        note="arithmetic (checks) and the deletion filter (assignment) both name round_budget",
        conflicting=("round_budget",),
    ),
)
