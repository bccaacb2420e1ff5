"""Every method of the experiment as a :class:`Plan` that the same runtime executes.

The runtime runs any plan: groups of devices, each with a depth (top layers fine-tuned), a
number of intra-group rounds ``tau`` per global round and ``local_steps``, then a layer-wise
merge across groups weighted by samples. With ``tau = 1`` in every group, hierarchical
aggregation followed by that merge *is* flat FedAvg over the devices (layer-wise where
depths differ), so the flat methods are plans with ``tau = 1``. Every method is priced with
the planner's own formulas (``costs.py`` (C1)-(C8), ``convergence.py`` (M1)-(M5), through
``assignment.data``), so their predictions compare one to one.

=================  ================================  ==================  ======================
method             groups                            depth               intra_rounds
=================  ================================  ==================  ======================
fedlora            one group, every device           full                1
hierfavg           random (``random_grouping``)      full                uniform (settings)
grouping_only      near-IID (``group_devices``)      full                uniform (settings)
grouping_freq      near-IID                          full                optimised per group
grouping_depth     near-IID                          optimised per group uniform (settings)
legend             devices of equal depth            per device, by speed 1
hetlora            capability classes                full, rank/class    1
fedra              one per device                    random, every round 1
fedgsp             near-IID, 1, 2, ... groups        full                1, devices in sequence
hierfedlora        near-IID                          optimised jointly with intra_rounds
=================  ================================  ==================  ======================

*Full depth* is the deepest of ``problem.effective_depth_choices`` that every device holds in
memory (``costs.peak_memory_bytes``); when that is short of the deepest choice the plan's
``reason`` says so. *legend* follows LEGEND (arXiv 2412.20004): with ``T*`` the
``legend_deadline_quantile`` quantile over devices of one full-depth local round (local steps
plus the adapter exchange, (C5) for the device alone), each device takes the deepest depth it
holds whose local round fits in ``T*`` (the shallowest choice if none does). *hetlora* and *fedra*
(heterogeneous LoRA ranks, random layer allocation) live in ``validation.heterogeneous``, which
states what they simplify; fedra re-draws its layers every round through :func:`method_replanner`.
*fedgsp* (FedGSP, arXiv 2201.12976: near-IID groups trained device after device, one more group every
round) lives in ``validation.fedgsp``; its replanner grows the groups.

Rules. Every method is priced under ``problem.aggregation`` (``planner.costs`` (C9): FFA-LoRA's halved
exchanges, FedEx-LoRA's residual, FLoRA's download stacking the group), and its plan records that rule.
HierFedLoRA and the ablations choose their depths and intra_rounds for it; the fixed constructions
only price and record it. :func:`problem_under_rule` is how the experiment harness plans ``method@rule``.

Outcomes. A *fixed construction* (fedlora, hierfavg, grouping_only, legend, hetlora, fedra, fedgsp) has nothing to
optimise: its depths and intra_rounds are priced, not solved, so its ``dual_bound`` equals
its ``objective_value``. It ignores ``round_budget_s`` and ``traffic_budget_bytes`` (the
methods know no budget) and its ``reason`` says when it breaks one. The ablations
(grouping_freq, grouping_depth) solve the assignment with one knob fixed and keep every
constraint. A plan is FEASIBLE, with its limit, only when a solver step (near-IID grouping,
assignment) stopped at one; a random grouping is a draw, not a search, and stops nothing.

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
>>> plan = make_method_plan("fedlora", problem)
>>> [(g.device_ids, g.depth, g.intra_rounds) for g in plan.groups], plan.solver
([(('d0', 'd1', 'd2', 'd3'), 2, 1)], 'baseline:fedlora')
>>> plan.predicted_round_time_s  # 3 s of local step + 2 s of exchange, then 4 s of global aggregation
9.0
>>> plan.predicted_rounds_to_target  # one IID group at full depth: R0 rounds (the calibrated 58.3)
58.3
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

from hierfedlora.planner import costs
from hierfedlora.planner.assignment import Assignment, assign_depths_and_rounds, assignment_from_choices
from hierfedlora.planner.assignment.data import build_assignment_data
from hierfedlora.planner.checks import BUDGET_TOLERANCE, check_feasibility, check_problem, device_round_times_s
from hierfedlora.planner.errors import HierFedLoraWarning, InfeasibleError, InvalidInputError, Issue
from hierfedlora.planner.grouping import group_devices, grouping_objective, random_grouping
from hierfedlora.planner.outcomes import Grouping, Plan, SolveStatus
from hierfedlora.planner.plan import build_plan, make_plan
from hierfedlora.planner.types import PlanningProblem
from hierfedlora.validation.baseline_settings import METHODS, SETTINGS_RULES, BaselineSettings
from hierfedlora.validation.fedgsp import FedgspReplanner, fedgsp_plan
from hierfedlora.validation.heterogeneous import FedraReplanner, fedra_plan, full_depth, hetlora_plan

if TYPE_CHECKING:  # the runtime imports torch; the baselines stay pure planning
    from hierfedlora.runtime.engine import Replanner

__all__ = [
    "METHODS",
    "SETTINGS_RULES",
    "BaselineSettings",
    "describe_method",
    "make_method_plan",
    "method_replanner",
    "problem_under_rule",
]

log = logging.getLogger(__name__)

_DESCRIPTIONS = {
    "fedlora": "FedLoRA: flat FedAvg of LoRA over every device at full depth",
    "hierfavg": "HierFAVG with LoRA: random groups, uniform intra_rounds, full depth",
    "grouping_only": "ablation: near-IID groups, uniform intra_rounds, full depth",
    "grouping_freq": "ablation: near-IID groups, intra_rounds optimised per group, full depth",
    "grouping_depth": "ablation: near-IID groups, depth optimised per group, uniform intra_rounds",
    "legend": "LEGEND-like: per-device depth by speed and memory, flat aggregation",
    "hetlora": "HetLoRA-like: LoRA rank by capability class (full/half/quarter), zero-padding merge, full depth; "
    "no self-pruning or sparsity-weighted aggregation (both come with the hetlora rule: hetlora@hetlora)",
    "fedra": "FedRA-like: random layers per device re-drawn every round, count by capability class, flat "
    "aggregation; independent draws per device",
    "fedgsp": "FedGSP-like: near-IID groups trained device after device (sequential), one more group every round "
    "(sequential to parallel), full depth",
    "hierfedlora": "HierFedLoRA: near-IID groups, depth and intra_rounds optimised jointly",
}

_DEFAULT_SETTINGS = BaselineSettings()  # frozen: safe as a shared default
_FULL_DEPTH = frozenset({"fedlora", "hierfavg", "grouping_only", "grouping_freq"})  # depth fixed at full depth
_CONSTRUCTIONS = frozenset({"fedlora", "hierfavg", "grouping_only", "legend"})  # priced, not solved: no budgets


def problem_under_rule(problem: PlanningProblem, rule: str, context: object | None = None) -> PlanningProblem:
    """``problem`` priced under aggregation rule ``rule`` (``PlanningProblem.aggregation``).

    FedEx-LoRA's residual is priced with the cost model's ``dense_bytes_per_layer``; a cost model written
    before it existed takes it from ``context``'s model (a ``runtime.context.RunContext``, as the experiment
    harness prepares one), measured as the engine's clock measures it. Without one the problem keeps the
    cost model as it is (and planning under ``fedex`` names the missing field).

    Raises
    ------
    InvalidInputError
        ``rule`` is not one of the rules (field ``aggregation``).
    """
    ruled = dataclasses.replace(problem, aggregation=rule)
    cost = problem.cost_model
    model = getattr(getattr(context, "model", None), "peft_model", None)
    if rule == "fedex" and cost.dense_bytes_per_layer is None and model is not None:
        from hierfedlora.models.base_delta import dense_bytes_per_layer  # torch, only here

        measured = dataclasses.replace(cost, dense_bytes_per_layer=dense_bytes_per_layer(model) or None)
        ruled = dataclasses.replace(ruled, cost_model=measured)
    return ruled


def describe_method(method: str) -> str:
    """One line on what ``method`` does, for reports.

    Raises
    ------
    InvalidInputError
        ``method`` is not one of :data:`METHODS`.
    """
    _check_method(method)
    return _DESCRIPTIONS[method]


def make_method_plan(method: str, problem: PlanningProblem, *, settings: BaselineSettings = _DEFAULT_SETTINGS) -> Plan:
    """The plan ``method`` runs on ``problem`` (the methods: module docstring).

    Parameters
    ----------
    method : str
        One of :data:`METHODS`.
    problem : PlanningProblem
        The fleet, costs, choices and solver options every method shares; ``solver.seed``
        seeds HierFAVG's random groups.
    settings : BaselineSettings

    Returns
    -------
    Plan
        ``solver`` is ``"baseline:<method>"`` (hierfedlora: :func:`make_plan`'s own plan,
        unchanged); ``reason`` describes the construction; predictions use the planner's formulas.

    Raises
    ------
    InvalidInputError
        ``method`` is unknown, or the problem breaks a cross-object rule.
    InfeasibleError
        A device holds no depth choice; grouping is infeasible (sizes, samples, speed band);
        or, for grouping_freq and grouping_depth, no choice meets the budgets.
    NoSolutionError, SolverFailedError
        As :func:`group_devices` and :func:`assign_depths_and_rounds`.
    """
    _check_method(method)
    if method == "hierfedlora":
        return make_plan(problem)
    started = time.perf_counter()
    issues = check_problem(problem)
    if issues:
        raise InvalidInputError(issues)
    memory = [conflict for conflict in check_feasibility(problem) if conflict.family == "memory"]
    if memory:  # every method needs each device to hold at least the shallowest depth
        raise InfeasibleError(memory[0].reason, conflicting=("memory",), hint=memory[0].hint)
    depth, depth_note = full_depth(problem)
    if method == "hetlora":
        return _logged(method, hetlora_plan(problem, depth=depth, note=depth_note))
    if method == "fedra":
        plan = fedra_plan(problem, global_round=1, seed=problem.solver.seed, depth=depth, note=depth_note)
        return _logged(method, plan)
    if method == "fedgsp":
        return _logged(method, fedgsp_plan(problem, global_round=1, depth=depth, note=depth_note))
    tau = settings.uniform_intra_rounds
    if method == "legend":
        grouping, depths, reason = _legend(problem, settings.legend_deadline_quantile)
        assignment = _priced(grouping, problem, depths, (1,) * len(depths), started)
    elif method == "fedlora":
        grouping = _constructed(problem, (tuple(range(len(problem.devices))),), "single")
        assignment = _priced(grouping, problem, (depth,), (1,), started)
        reason = f"flat FedAvg: one group of {len(problem.devices)} devices, depth {depth}, intra_rounds 1"
    elif method == "hierfavg":
        drawn = random_grouping(problem, problem.solver.seed)
        grouping = dataclasses.replace(drawn, status=SolveStatus.OPTIMAL, limit=None)  # a draw, not a search
        assignment = _priced(grouping, problem, _each(grouping, depth), _each(grouping, tau), started)
        reason = f"random groups (seed {problem.solver.seed}), depth {depth}, intra_rounds {tau}"
    else:
        grouping = group_devices(problem)
        reason = f"near-IID groups ({grouping.method})"
        if method == "grouping_only":
            assignment = _priced(grouping, problem, _each(grouping, depth), _each(grouping, tau), started)
            reason += f", depth {depth}, intra_rounds {tau}"
        elif method == "grouping_freq":
            assignment = assign_depths_and_rounds(grouping, dataclasses.replace(problem, depth_choices=(depth,)))
            reason += f", depth {depth}, intra_rounds optimised per group"
        else:
            assignment = assign_depths_and_rounds(grouping, dataclasses.replace(problem, intra_rounds_choices=(tau,)))
            reason += f", depth optimised per group, intra_rounds {tau}"
    if method in _FULL_DEPTH:
        reason += depth_note
    if method in _CONSTRUCTIONS:
        reason += _broken_budgets(problem, assignment)
    return _plan(problem, grouping, assignment, method=method, reason=reason, started=started)


def method_replanner(
    method: str, problem: PlanningProblem, *, settings: BaselineSettings = _DEFAULT_SETTINGS, seed: int = 0
) -> Replanner | None:
    """The replanner ``method`` runs with (``runtime.engine.run_plan(..., replanner=...)``), or ``None``.

    fedra has one: :class:`~hierfedlora.validation.heterogeneous.FedraReplanner`, which re-draws
    every device's layers after each round from ``(seed, next round)``; and fedgsp:
    :class:`~hierfedlora.validation.fedgsp.FedgspReplanner`, which adds a group after each round.
    :func:`make_method_plan` draws round 1 from ``problem.solver.seed``; pass the same ``seed`` for one seeded sequence.
    ``settings`` is accepted for symmetry with :func:`make_method_plan` (no method reads it yet).

    Raises
    ------
    InvalidInputError
        ``method`` is not one of :data:`METHODS`.
    """
    _check_method(method)
    del settings
    if method == "fedgsp":
        return FedgspReplanner(problem)
    return FedraReplanner(problem, seed) if method == "fedra" else None


def _logged(method: str, plan: Plan) -> Plan:
    log.info("%s plan %s: %s; %.4g s to target", method, plan.plan_id, plan.reason, plan.objective_value)
    return plan


def _check_method(method: object) -> None:
    if method not in METHODS:
        expected = "one of " + ", ".join(repr(name) for name in METHODS)
        raise InvalidInputError([Issue("method", expected, method)])


def _each(grouping: Grouping, value: int) -> tuple[int, ...]:
    return (value,) * len(grouping.members)


def _constructed(problem: PlanningProblem, members: tuple[tuple[int, ...], ...], method: str) -> Grouping:
    """A grouping built, not solved: its grouping objective, bound = objective (nothing to optimise)."""
    objective = grouping_objective(problem, members)
    return Grouping(
        members=members,
        objective=objective,
        bound=objective,
        status=SolveStatus.OPTIMAL,
        limit=None,
        solve_time_s=0.0,
        method=method,
    )


def _legend(problem: PlanningProblem, quantile: float) -> tuple[Grouping, tuple[int, ...], str]:
    """LEGEND's depths per device, and the groups of devices with equal depth (ordered by first member)."""
    cost, batch, choices = problem.cost_model, problem.effective_batch_size, problem.effective_depth_choices
    round_s = device_round_times_s(problem)  # (N, |D|): local steps + exchange, each device alone
    deadline_s = float(np.quantile(round_s[:, -1], quantile))
    memory = np.array([device.memory_bytes for device in problem.devices])
    need = np.array([costs.peak_memory_bytes(cost, depth=d, batch_size=batch) for d in choices])
    allowed = (memory[:, None] >= need[None, :]) & (round_s <= deadline_s * (1 + BUDGET_TOLERANCE))
    # the deepest allowed choice; the shallowest when none is (argmax of an all-False row is 0)
    depth_idx = len(choices) - 1 - np.argmax(allowed[:, ::-1], axis=1)
    depth_idx = np.where(allowed.any(axis=1), depth_idx, 0)
    device_depths = [choices[j] for j in depth_idx]
    by_depth: dict[int, list[int]] = {}
    for position, depth in enumerate(device_depths):
        by_depth.setdefault(depth, []).append(position)
    members = tuple(tuple(group) for group in by_depth.values())  # dict order: by first member
    depths = tuple(by_depth)
    reason = (
        f"LEGEND-like: T* = {deadline_s:.4g} s (quantile {quantile:g} of full-depth local rounds); "
        f"depth per device, groups of equal depth {list(depths)}, intra_rounds 1"
    )
    return _constructed(problem, members, "by_depth"), depths, reason


def _priced(
    grouping: Grouping, problem: PlanningProblem, depths: tuple[int, ...], intra_rounds: tuple[int, ...], started: float
) -> Assignment:
    """The Assignment of fixed depths and intra_rounds, priced with the planner's tables (dual bound = objective)."""
    restricted = dataclasses.replace(
        problem, depth_choices=tuple(sorted(set(depths))), intra_rounds_choices=tuple(sorted(set(intra_rounds)))
    )
    data = build_assignment_data(grouping, restricted)
    choices = np.array([data.choice_index(d, t) for d, t in zip(depths, intra_rounds, strict=True)], dtype=np.int64)
    assert data.fits[np.arange(data.num_groups), choices].all(), "depths were chosen to fit memory"
    ratio_s = data.evaluate(choices).ratio_s
    return assignment_from_choices(data, choices, ratio_s, SolveStatus.OPTIMAL, None, started, 0, "fixed")


def _broken_budgets(problem: PlanningProblem, assignment: Assignment) -> str:
    """A note for ``reason`` naming each budget the construction breaks (it does not know them)."""
    notes = []
    budget_s, budget_bytes = problem.round_budget_s, problem.traffic_budget_bytes
    if budget_s is not None and assignment.round_time_s > budget_s * (1 + BUDGET_TOLERANCE):
        notes.append(f"breaks round_budget_s = {budget_s:g} s ({assignment.round_time_s:.4g} s a round)")
    if budget_bytes is not None and assignment.traffic_bytes > budget_bytes * (1 + BUDGET_TOLERANCE):
        notes.append(f"breaks traffic_budget_bytes = {budget_bytes:.6g} ({assignment.traffic_bytes:.6g} a round)")
    return "".join(f"; {note}" for note in notes)


def _plan(
    problem: PlanningProblem, grouping: Grouping, assignment: Assignment, *, method: str, reason: str, started: float
) -> Plan:
    plan = build_plan(
        problem,
        grouping,
        assignment,
        solver=f"baseline:{method}",
        solve_time_s=time.perf_counter() - started,
        reason=reason,
    )
    limit = plan.limit
    log.info("%s plan %s: %s; %.4g s to target", method, plan.plan_id, reason, plan.objective_value)
    if limit is not None:
        warnings.warn(
            f"{method}: a {limit.name} limit left a gap open (plan gap {plan.relative_gap:.2%}, grouping gap "
            f"{plan.grouping_relative_gap:.2%}); raise solver.time_limit_s to close it",
            HierFedLoraWarning,
            stacklevel=3,
        )
    return plan
