"""Make a plan: check the problem, group the devices, assign depths and intra_rounds, stamp provenance.

:func:`make_plan` is the planner's one entry point for a single plan; it raises on the
first step that fails (exceptions for one plan; ``whatif`` turns them into rows).
:func:`summarize_plan` renders a plan as the table the CLI prints.

Examples
--------
Four devices, two classes; two groups of two, and the toy costs of ``tests/planner/cases.py``
(``base`` case): both groups train depth 2 with 2 intra-group rounds, 14 s a global round,
10 · 14 / 2 = 70 s to target.

>>> from hierfedlora.planner.types import ConvergenceParams, CostModel, DeviceProfile, PlanningProblem
>>> cost = CostModel(model_name="toy", num_layers=2, batch_size=1, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.5, 0.5), layer_backward_s=(1.0, 1.0),
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1_000_000, head_bytes=0,
...     activation_bytes_per_sample_per_layer=1, optimizer_bytes_per_layer=0,
...     base_model_bytes=1_000_000)
>>> devices = tuple(DeviceProfile(device_id=f"d{i}", label_counts=c, compute_scale=1.0,
...     memory_bytes=2**30, uplink_mbps=16.0, downlink_mbps=16.0)
...     for i, c in enumerate([(10, 0), (0, 10), (20, 0), (0, 20)]))
>>> problem = PlanningProblem(devices=devices, cost_model=cost, num_groups=2, min_group_size=2,
...     max_group_size=2, depth_choices=(1, 2), intra_rounds_choices=(1, 2), local_steps=1,
...     intra_latency_s=0.0, global_latency_s=0.0, backhaul_mbps=8.0,
...     convergence=ConvergenceParams(depth_exponent=1.0, reference_rounds=10.0))
>>> plan = make_plan(problem)
>>> [(g.device_ids, g.depth, g.intra_rounds) for g in plan.groups], plan.objective_value
([(('d0', 'd1'), 2, 2), (('d2', 'd3'), 2, 2)], 70.0)

Every outcome has a type; handle each one:

>>> import dataclasses
>>> from hierfedlora.planner.errors import InfeasibleError, NoSolutionError
>>> try:
...     plan = make_plan(dataclasses.replace(problem, round_budget_s=4.0))
... except InfeasibleError as err:
...     print(err.reason, "| conflicting:", ", ".join(err.conflicting))
... except NoSolutionError as err:
...     print(f"no feasible plan within {err.solve_time_s:.0f} s")
... else:
...     if plan.status is SolveStatus.FEASIBLE:
...         print(f"time limit hit; gap {plan.relative_gap:.1%}")
round_budget_s = 4 s is below the fastest possible round, 5 s: d0 alone needs 3 s at depth 1 with intra_rounds 1, \
plus 2 s of global aggregation | conflicting: round_budget
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence

import numpy as np

from hierfedlora.planner import costs
from hierfedlora.planner.assignment import Assignment, assign_depths_and_rounds
from hierfedlora.planner.checks import format_bytes, raise_for_problem
from hierfedlora.planner.errors import HierFedLoraWarning
from hierfedlora.planner.grouping import group_devices
from hierfedlora.planner.grouping.model import grouping_data, l1_lower_bound
from hierfedlora.planner.io import sha256_of
from hierfedlora.planner.outcomes import Group, Grouping, Limit, Plan, SolveStatus
from hierfedlora.planner.rule_costs import predicted_backhaul_bytes, predicted_group_traffic_bytes
from hierfedlora.planner.skew import label_skew
from hierfedlora.planner.types import DeviceProfile, PlanningProblem

__all__ = [
    "build_plan",
    "combined_status",
    "devices_sha256",
    "make_plan",
    "plan_groups",
    "skew_floor",
    "skew_free_bound",
    "summarize_plan",
]

GROUPING_GAP_SHOWN = 0.10  # the header shows the grouping's own gap only when its bound proves it this close

_DEVICE_FIELDS = tuple(field.name for field in dataclasses.fields(DeviceProfile))


def devices_sha256(devices: Sequence[DeviceProfile]) -> str:
    """``io.sha256_of(devices)``, the same digest, seven times faster (a million devices in seconds).

    A device's fields are strings, numbers, tuples of them or null, which ``json`` writes as
    ``to_dict`` would, so the canonical JSON is built without the generic walk.
    """
    rows = [{name: getattr(device, name) for name in _DEVICE_FIELDS} for device in devices]
    text = json.dumps(rows, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


log = logging.getLogger(__name__)


def make_plan(
    problem: PlanningProblem,
    *,
    parent_plan_id: str | None = None,
    reason: str = "",
    grouping: Grouping | None = None,
) -> Plan:
    """Plan ``problem``: check it, group its devices, choose every group's depth and intra_rounds.

    Parameters
    ----------
    problem : PlanningProblem
        ``solver.time_limit_s`` bounds grouping and assignment separately (seconds).
    parent_plan_id : str or None
        The plan this one replaces (``planner.feedback`` re-plans), kept as provenance.
    reason : str
        Why this plan was made (e.g. ``"device d3 left"``), kept as provenance.
    grouping : Grouping or None
        Reuse a grouping of these very devices (``grouping.group_devices(problem)`` of a problem
        that differs only in fields the grouping never reads: costs, network, target, budgets,
        depth and intra_rounds choices), as what-if sweeps do; ``None`` groups afresh.

    Returns
    -------
    Plan
        ``objective_value`` is the predicted time to target (seconds) and ``dual_bound`` the
        :func:`skew_free_bound`, a proven lower bound on the time to target of every plan with
        these groups and any skew a grouping of the fleet can have, so ``relative_gap`` is the
        certified gap: what the assignment left open plus the most the avoidable part of the
        residual label skew can cost. ``status`` is
        FEASIBLE, with the limit that stopped it, if grouping or assignment stopped at a limit
        (the flow grouping always does: it proves nothing about its own objective).

    Raises
    ------
    InvalidInputError
        Rules spanning objects are broken (``checks.check_problem``), all listed.
    InfeasibleError
        Arithmetic (``checks.check_feasibility``), grouping or assignment proves no plan
        exists; ``conflicting`` names the constraint families.
    NoSolutionError
        A time limit passed before grouping or assignment found anything.
    SolverFailedError
        CP-SAT, HiGHS or cvxpy failed.

    Warns
    -----
    HierFedLoraWarning
        Legal but suspicious input (``checks.find_warnings``), or a limit that left a gap open.
    """
    started = time.perf_counter()
    raise_for_problem(problem, stacklevel=3)  # warnings point at make_plan's caller
    if grouping is None:
        grouping = group_devices(problem)
    assignment = assign_depths_and_rounds(grouping, problem)
    bound = skew_free_bound(grouping, problem, assignment)
    plan = build_plan(
        problem,
        grouping,
        assignment,
        solver=f"{grouping.method}+highs",
        solve_time_s=time.perf_counter() - started,
        parent_plan_id=parent_plan_id,
        reason=reason,
        dual_bound=bound,
    )
    status, limit = plan.status, plan.limit
    log.info(
        "plan %s: %d groups, %.4g s to target (%s, certified gap %.2f%% against the skew-free bound %.4g s), %.3g s",
        plan.plan_id,
        len(plan.groups),
        plan.objective_value,
        status.name,
        100 * plan.relative_gap,
        plan.dual_bound,
        plan.solve_time_s,
    )
    if status is SolveStatus.FEASIBLE and limit is Limit.TIME:
        warnings.warn(
            f"a TIME limit left a gap open (the limit is a safety cap): grouping {grouping.status.name}, assignment "
            f"{assignment.status.name} (gap {assignment.relative_gap:.2%}); the plan's certified gap is "
            f"{plan.relative_gap:.2%}; raise solver.time_limit_s for the deterministic result",
            HierFedLoraWarning,
            stacklevel=2,
        )
    return plan


MAX_VERTEX_GROUPS = 64
"""Up to this many groups the bound spends the skew floor (:func:`skew_floor`); beyond, it uses skew 0 everywhere."""


def skew_floor(problem: PlanningProblem, grouping: Grouping) -> float:
    """``D``: a proven lower bound on ``sum_k w_k delta_k``, the sample-weighted skew (total variation) of
    every grouping of these devices into ``len(grouping.members)`` groups within the size and sample bounds.

    ``sum_k w_k delta_k`` is half the grouping objective's L1 part, so ``D`` is half its
    ``l1_lower_bound`` (the containment bound: the labels a device holds beyond what any group
    holding it can absorb count wherever it goes). Near 0 for IID fleets; large when devices hold
    few classes.
    """
    data = grouping_data(problem, num_groups=len(grouping.members))
    return l1_lower_bound(data) / 2


def skew_free_bound(grouping: Grouping, problem: PlanningProblem, assignment: Assignment | None = None) -> float:
    """A proven lower bound on the predicted time to target of every plan with these groups, whatever its
    label mix, as long as its skew is what some grouping of this fleet could have.

    The convergence model divides a group's progress by ``1 + c * delta_k * (tau_k - 1)``, which is
    at least 1, equals 1 at skew 0, and is convex and decreasing in ``delta_k``. Every grouping's
    skews meet ``sum_k w_k delta_k >= D`` (:func:`skew_floor`). For fixed depths and intra_rounds
    the progress, convex in the skews, is largest over ``{delta in [0, 1]^K : sum_k w_k delta_k >= D}``
    at a vertex of the face ``sum_k w_k delta_k = D``; when ``D <= min_k w_k`` those vertices put
    all of ``D`` on one group ``j`` (``delta_j = D / w_j``, 0 elsewhere). So the least of the K
    assignment problems with those skews (each solved with a proven bound by the assignment MILP)
    bounds from below every plan whose groups hold these members (their speeds, links and memory
    set the round times) with any skews a grouping can have. With ``D = 0``, more than
    :data:`MAX_VERTEX_GROUPS` groups or ``D > min_k w_k``, the bound puts skew 0 on every group
    (``skew_sensitivity = 0``), which is valid too, only looser. The plan's gap against it covers
    what the assignment left open and the most the avoidable part of the residual skew can cost.
    ``assignment`` (the plan's own) tightens nothing but caps the value at its bound.
    """
    floor, shares = 0.0, np.ones(1)
    if problem.convergence.skew_sensitivity > 0 and len(grouping.members) <= MAX_VERTEX_GROUPS:
        floor = skew_floor(problem, grouping)
        samples = np.array([d.num_samples for d in problem.devices], dtype=np.int64)
        shares = np.array([samples[list(members)].sum() for members in grouping.members]) / samples.sum()
    if 0 < floor <= shares.min():
        bound = math.inf
        for j, share in enumerate(shares):  # vertex j: all of the floor on group j
            skews = np.zeros(len(shares))
            skews[j] = min(1.0, floor / share)
            bound = min(bound, assign_depths_and_rounds(grouping, problem, skew_tv=skews.tolist()).dual_bound)
    else:
        params = dataclasses.replace(problem.convergence, skew_sensitivity=0.0)
        bound = assign_depths_and_rounds(grouping, dataclasses.replace(problem, convergence=params)).dual_bound
    return bound if assignment is None else min(bound, assignment.dual_bound)


def build_plan(
    problem: PlanningProblem,
    grouping: Grouping,
    assignment: Assignment,
    *,
    solver: str,
    solve_time_s: float,
    parent_plan_id: str | None = None,
    reason: str = "",
    dual_bound: float | None = None,
) -> Plan:
    """The :class:`Plan` of a grouping and an assignment of ``problem``, with its provenance stamped.

    ``status`` is OPTIMAL only if both steps are; otherwise FEASIBLE with the limit that stopped
    one of them. ``dual_bound`` defaults to the assignment's (for these groups, with their skew);
    :func:`make_plan` passes :func:`skew_free_bound`. Baselines (``validation.baselines``) build
    their fixed plans with it too.
    """
    status, limit = combined_status(grouping, assignment)
    cost = problem.cost_model
    groups = plan_groups(problem, grouping, assignment)
    return Plan(
        groups=groups,
        predicted_round_time_s=assignment.round_time_s,
        predicted_rounds_to_target=assignment.rounds_to_target,
        predicted_traffic_bytes=sum(g.predicted_traffic_bytes for g in groups),
        predicted_backhaul_bytes=predicted_backhaul_bytes(problem, assignment.depths),
        target=problem.convergence.describe_target(),
        objective_value=assignment.objective_value,
        dual_bound=assignment.dual_bound if dual_bound is None else dual_bound,
        status=status,
        limit=limit,
        solve_time_s=solve_time_s,
        solver=solver,
        seed=problem.solver.seed,
        batch_size=problem.effective_batch_size,
        model_name=cost.model_name,
        cost_model_sha256=cost.model_sha256 or sha256_of(cost),
        fleet_sha256=devices_sha256(problem.devices),
        grouping_objective=grouping.objective,
        grouping_bound=grouping.bound,
        parent_plan_id=parent_plan_id,
        reason=reason,
        aggregation=problem.aggregation,
    )


def combined_status(grouping: Grouping, assignment: Assignment) -> tuple[SolveStatus, Limit | None]:
    """FEASIBLE, with the limit that stopped it, if either step stopped at a limit; else OPTIMAL."""
    for step in (assignment, grouping):
        if step.status is not SolveStatus.OPTIMAL:
            return SolveStatus.FEASIBLE, step.limit or Limit.TIME
    return SolveStatus.OPTIMAL, None


def plan_groups(problem: PlanningProblem, grouping: Grouping, assignment: Assignment) -> tuple[Group, ...]:
    """The plan's groups: members, assigned depth and intra_rounds, label skew, intra-round time,
    traffic per global round ((C8)) and peak memory per device ((C4))."""
    devices, cost, batch = problem.devices, problem.cost_model, problem.effective_batch_size
    counts = np.array([d.label_counts for d in devices], dtype=np.int64)
    global_counts = counts.sum(axis=0)
    return tuple(
        Group(
            group_id=k,
            device_ids=tuple(devices[i].device_id for i in members),
            depth=assignment.depths[k],
            intra_rounds=assignment.intra_rounds[k],
            local_steps=problem.local_steps,
            label_skew=label_skew(counts[list(members)].sum(axis=0), global_counts),
            predicted_intra_round_s=assignment.intra_round_time_s[k],
            predicted_traffic_bytes=predicted_group_traffic_bytes(
                problem, num_devices=len(members), depth=assignment.depths[k], intra_rounds=assignment.intra_rounds[k]
            ),
            predicted_peak_memory_bytes=costs.peak_memory_bytes(cost, depth=assignment.depths[k], batch_size=batch),
        )
        for k, members in enumerate(grouping.members)
    )


def summarize_plan(plan: Plan) -> str:
    """A plan as a readable table: provenance, prediction, then one row per group.

    ``gap`` is the plan's certified gap on predicted time to target, against ``dual_bound`` (for a
    plan from :func:`make_plan`, the :func:`skew_free_bound`). The grouping's own gap follows in
    brackets only where its bound proves something (within ``GROUPING_GAP_SHOWN``).

    Examples
    --------
    >>> from hierfedlora.planner.outcomes import Skew
    >>> group = Group(group_id=0, device_ids=("a", "b"), depth=2, intra_rounds=4, local_steps=5,
    ...     label_skew=Skew(kl=0.01, l1=0.1, hellinger=0.05), predicted_intra_round_s=3.0)
    >>> plan = Plan(groups=(group,), predicted_round_time_s=13.0, predicted_rounds_to_target=40.0,
    ...     objective_value=520.0, dual_bound=510.0, status=SolveStatus.FEASIBLE, limit=Limit.TIME,
    ...     solve_time_s=1.5, solver="cpsat+highs", seed=0)
    >>> print(summarize_plan(plan))  # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
    plan ...   status FEASIBLE (TIME limit)   gap 1.92% (grouping 0.00%)   solver cpsat+highs   seed 0   solve 1.50 s
    aggregation fedavg
    predicted: 13 s per global round x 40 rounds = 520 s to target (bound 510 s)
    group  devices  skew L1  depth  intra_rounds  intra-round s  group part s
        0        2    0.100      2             4          3.000        12.000
    """
    limit = f" ({plan.limit.name} limit)" if plan.limit is not None else ""
    grouping_gap = plan.grouping_relative_gap
    grouping = f" (grouping {grouping_gap:.2%})" if grouping_gap <= GROUPING_GAP_SHOWN else ""
    lines = [
        f"plan {plan.plan_id}   status {plan.status.name}{limit}   gap {plan.relative_gap:.2%}{grouping}"
        f"   solver {plan.solver}   seed {plan.seed}   solve {plan.solve_time_s:.2f} s"
        f"   aggregation {plan.aggregation}",
    ]
    if plan.parent_plan_id is not None or plan.reason:
        lines.append(f"parent: {plan.parent_plan_id or 'none'}   reason: {plan.reason or '-'}")
    lines.append(
        f"predicted: {plan.predicted_round_time_s:.4g} s per global round x {plan.predicted_rounds_to_target:.4g} "
        f"rounds = {plan.objective_value:.4g} s to target (bound {plan.dual_bound:.4g} s)"
    )
    if plan.target:
        lines.append(f"target: {plan.target}")
    if plan.predicted_peak_memory_bytes or plan.predicted_traffic_bytes:
        lines.append(
            f"per global round: devices move {format_bytes(plan.predicted_traffic_bytes)}, the backhaul "
            f"{format_bytes(plan.predicted_backhaul_bytes)}; peak device memory "
            f"{format_bytes(plan.predicted_peak_memory_bytes)}"
        )
    header: tuple[str, ...] = ("group", "devices", "skew L1", "depth", "intra_rounds", "intra-round s", "group part s")
    extra = any(g.layers is not None or g.lora_rank is not None for g in plan.groups)
    if extra:  # heterogeneous-LoRA baselines: the layers and rank each group trains
        header += ("layers", "rank")
    lines.append("  ".join(header))
    widths = [len(name) for name in header]
    for group in plan.groups:
        cells: tuple[str, ...] = (
            str(group.group_id),
            str(len(group.device_ids)),
            f"{group.label_skew.l1:.3f}",
            str(group.depth),
            str(group.intra_rounds),
            f"{group.predicted_intra_round_s:.3f}",
            f"{group.intra_rounds * group.predicted_intra_round_s:.3f}",
        )
        if extra:
            layers = "top" if group.layers is None else ",".join(map(str, group.layers))
            cells += (layers, "full" if group.lora_rank is None else str(group.lora_rank))
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True)))
    return "\n".join(lines)
