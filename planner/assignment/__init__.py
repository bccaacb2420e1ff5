r"""Depth and intra_rounds for every group: a MILP with a ratio objective, solved exactly.

Sets
    k in K           groups (from ``planner.grouping``); i in k their devices
    c = (d, tau)     choices: d in D (depth_choices) x tau in Theta (intra_rounds_choices)

Data (``assignment/data.py``, from ``costs.py`` (C1)-(C8) and ``convergence.py`` (M1)-(M5))
    t_k(d)   (C5) one intra-group round of group k: max over members of I·step_i(d) + exchange_i(d)
    a_kc     = tau · t_k(d)                 group k's part of a global round
    g_c      (C6) global aggregation when the deepest group has depth d
    fit_kc   1 if (C4) mem(d) <= the smallest memory in group k, else 0
    b_kc     (C8) = tau · |k| · (up + down)   traffic of group k per global round (2 · bytes(d) under FedAvg)

    Every exchange moves the bytes of ``problem.aggregation`` (C9): ``up`` and ``down`` of
    ``rule_costs.exchange_bytes`` at depth d, with ``|k|`` inputs inside group k and ``K`` at (C6)
    (FLoRA's stacked download), the same function the simulated clock charges.
    p_kc     (M1) = w_k · (d / L)^beta · tau / (1 + c · delta_k · (tau - 1)), with w_k the
             group's share of samples and delta_k the total variation of its pooled labels
             from the global ones (``skew.total_variation``)
    B, Phi   round_budget_s, traffic_budget_bytes (each optional); R0 reference_rounds

Variables
    x_kc in {0, 1}   group k takes choice c
    T >= 0           the slowest group's part of the round
    G >= 0           the global aggregation time t_glob

Constraints (built in this order by ``assignment.milp.build_milp``)
    (0)  x_kc >= S_kc                                   S = 0, except in the one solve that
                                                        hands HiGHS a starting choice
    (1)  sum_c x_kc = 1              for all k          one choice per group
    (2)  x_kc = 0                    where fit_kc = 0   every member holds its depth (memory)
    (3)  T >= sum_c a_kc x_kc        for all k          T is the max over groups (C7)
    (3') G >= sum_c g_c x_kc         for all k          t_glob is set by the deepest group (C6)
    (4)  T + G <= B                                     round budget, when set
    (5)  sum_kc b_kc x_kc <= Phi                        traffic budget, when set

    Given (1), ``sum_c a_kc x_kc`` *is* the chosen a_kc, so (3) and (3') are exact; they are
    also tighter in the LP relaxation than ``T >= a_kc x_kc`` per (k, c), since a sum of
    non-negative terms bounds each of them. T and G only appear with positive sign in the
    objective, so at an optimum they equal the two maxima.

Objective
    min  R0 · (T + G) / sum_kc p_kc x_kc          predicted time to target, (M4) · (M5)

Solve (exact)
    (a) Levels. Without (5) the optimum is found by enumerating the round-time level and the
        depth cap (``assignment/levels.py`` proves it). That optimum is a lower bound on the
        full problem; when it also meets (5) it is optimal, proven, and no MILP runs.
    (b) Dinkelbach. Otherwise, with lambda at the best incumbent's ratio, repeat: solve the MILP
        ``min T + G - lambda · sum p x`` subject to (1)-(5) with HiGHS, and set lambda to the
        ratio ``(T + G) / sum p x`` of its solution. On a finite set of choices
        ``F(lambda) = min (T + G) - lambda · sum p x`` decreases in lambda and is 0 exactly at
        the optimal ratio; every step lowers lambda until ``F(lambda) = 0`` (Dinkelbach 1967),
        so the loop ends at the optimum. Bounds: (a)'s ratio is one. And a MILP's proven bound
        ``F_lb`` gives, for an optimal choice x*, ``ratio* >= lambda + F_lb / P(x*)``, so
        ``ratio* >= lambda + F_lb / P_max`` when ``F_lb >= 0`` and ``lambda + F_lb / P_min``
        when ``F_lb < 0``: ``P_max`` sums each group's largest allowed p_kc; ``P_min`` is the
        larger of the sum of the smallest and the fastest possible round over the
        incumbent's ratio (``P(x*) = (T + G)(x*) / ratio*`` is at least that). HiGHS's
        absolute gap is ``tol · lambda · P_min / 2``, which keeps the final relative gap
        within ``tol``. The first incumbent is the better of the cheapest choice per group
        and a Lagrangian heuristic that prices traffic
        (``assignment.levels.lagrangian_incumbent``), handed to HiGHS as its start, so a time
        limit still leaves a good plan.

Outcomes: proven within ``relative_gap_tolerance`` -> OPTIMAL; time limit with an incumbent
-> FEASIBLE + Limit.TIME; no choice satisfies the constraints -> a deletion filter over (2),
(4), (5) (drop one family, re-solve, leave it out if still infeasible) and
:class:`InfeasibleError` naming what is left; no incumbent at the limit ->
:class:`NoSolutionError`; a solver exception -> :class:`SolverFailedError`. (A cap of 100
Dinkelbach steps, which finite convergence never reaches, would report FEASIBLE + Limit.NODE.)

Examples
--------
Two groups of two identical devices; the deeper, more often aggregating choice wins:

>>> from hierfedlora.planner.outcomes import Grouping, SolveStatus
>>> from hierfedlora.planner.types import ConvergenceParams, CostModel, DeviceProfile, PlanningProblem
>>> cost = CostModel(model_name="toy", num_layers=2, batch_size=1, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.5, 0.5), layer_backward_s=(1.0, 1.0),
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1_000_000, head_bytes=0,
...     activation_bytes_per_sample_per_layer=1, optimizer_bytes_per_layer=0,
...     base_model_bytes=1_000_000)
>>> devices = tuple(DeviceProfile(device_id=f"d{i}", label_counts=c, compute_scale=1.0,
...     memory_bytes=2**30, uplink_mbps=16.0, downlink_mbps=16.0)
...     for i, c in enumerate([(10, 0), (0, 10), (20, 0), (0, 20)]))
>>> problem = PlanningProblem(devices=devices, cost_model=cost, depth_choices=(1, 2),
...     intra_rounds_choices=(1, 2), local_steps=1, intra_latency_s=0.0, global_latency_s=0.0,
...     backhaul_mbps=8.0, convergence=ConvergenceParams(depth_exponent=1.0, reference_rounds=10.0))
>>> grouping = Grouping(members=((0, 1), (2, 3)), objective=0.0, bound=0.0,
...     status=SolveStatus.OPTIMAL, limit=None, solve_time_s=0.0, method="manual")
>>> result = assign_depths_and_rounds(grouping, problem)
>>> result.depths, result.intra_rounds, result.objective_value, result.status.name
((2, 2), (2, 2), 70.0, 'OPTIMAL')
>>> evaluate_assignment(grouping, problem, depths=(1, 1), intra_rounds=(2, 2))  # 10 · (6 + 2) / 1
80.0
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner.assignment.data import AssignmentData, build_assignment_data, evaluate_assignment
from hierfedlora.planner.assignment.levels import best_level_solution, lagrangian_incumbent
from hierfedlora.planner.assignment.milp import (
    MILP_FAMILIES,
    Milp,
    build_milp,
    deletion_filter,
    explain_conflict,
    solve_milp,
)
from hierfedlora.planner.checks import check_problem
from hierfedlora.planner.errors import InvalidInputError, NoSolutionError
from hierfedlora.planner.outcomes import Grouping, Limit, SolveStatus
from hierfedlora.planner.types import PlanningProblem, SolverOptions

__all__ = ["MILP_FAMILIES", "Assignment", "assign_depths_and_rounds", "assignment_from_choices", "evaluate_assignment"]

log = logging.getLogger(__name__)

_MAX_DINKELBACH_STEPS = 100  # finite convergence is proven; this only guards against solver noise


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """The depth and intra_rounds of every group, what they predict, and how the solve ended.

    ``objective_value`` is the predicted time to target in seconds, ``dual_bound`` a proven
    lower bound on it (for this grouping). ``method`` is ``"levels"`` when step (a) proved
    the optimum and ``"dinkelbach"`` when MILPs ran; ``iterations`` counts those MILPs.
    """

    depths: tuple[int, ...]
    intra_rounds: tuple[int, ...]
    intra_round_time_s: tuple[float, ...]
    round_time_s: float
    global_aggregation_s: float
    traffic_bytes: float
    rounds_to_target: float
    objective_value: float
    dual_bound: float
    status: SolveStatus
    limit: Limit | None
    solve_time_s: float
    iterations: int
    method: str

    @property
    def relative_gap(self) -> float:
        """``(objective - bound) / objective``; 0 for a proven optimum."""
        return max(0.0, self.objective_value - self.dual_bound) / max(abs(self.objective_value), 1e-9)


def assign_depths_and_rounds(
    grouping: Grouping, problem: PlanningProblem, *, skew_tv: Sequence[float] | None = None
) -> Assignment:
    """Choose every group's depth and intra_rounds to minimise the predicted time to target.

    Parameters
    ----------
    grouping : Grouping
        ``members[k]`` are positions into ``problem.devices``; they must partition them.
    problem : PlanningProblem
        Depth and intra_rounds choices, budgets, convergence constants and solver options
        (``time_limit_s`` bounds this whole call; ``relative_gap_tolerance``, ``threads``
        and ``seed`` go to HiGHS).
    skew_tv : sequence of float, optional
        Skews delta_k to price instead of the groups' own (one in [0, 1] per group), as
        ``plan.skew_free_bound`` does for hypothetical label mixes.

    Returns
    -------
    Assignment

    Raises
    ------
    InvalidInputError
        If the problem breaks a cross-object rule or ``grouping`` is not a partition.
    InfeasibleError
        If no choice meets the constraints; ``conflicting`` holds the families of
        :data:`MILP_FAMILIES` a deletion filter could not drop.
    NoSolutionError
        If the time limit passed before any feasible choice was found.
    SolverFailedError
        If HiGHS or cvxpy failed.
    """
    started = time.perf_counter()
    deadline = started + problem.solver.time_limit_s
    issues = check_problem(problem)
    if issues:
        raise InvalidInputError(issues)
    data = build_assignment_data(grouping, problem, skew_tv=skew_tv)
    options = problem.solver
    # (a) the exact optimum without (5)
    relaxed = best_level_solution(
        round_part_s=data.round_part_s,
        progress=data.progress,
        allowed=data.fits,
        choice_depth_idx=data.choice_depth_idx,
        global_by_depth_s=data.global_by_depth_s,
        round_budget_s=data.round_limit_s,
    )
    if relaxed is None:
        raise explain_conflict(data, deletion_filter(data, options, deadline))
    if data.satisfies(relaxed.choices):
        log.debug("levels: optimum %.6g s per unit progress meets every constraint", relaxed.ratio_s)
        return assignment_from_choices(
            data, relaxed.choices, relaxed.ratio_s, SolveStatus.OPTIMAL, None, started, 0, "levels"
        )
    # (b) the traffic budget binds: Dinkelbach iterations over the MILP
    search = _dinkelbach(data, options, deadline, lower_ratio_s=relaxed.ratio_s)
    if search.infeasible:
        raise explain_conflict(data, deletion_filter(data, options, deadline))
    if search.choices is None:
        raise NoSolutionError(Limit.TIME, time.perf_counter() - started, "the assignment MILP found no incumbent")
    optimal = search.limit is None
    status, limit = (SolveStatus.OPTIMAL, None) if optimal else (SolveStatus.FEASIBLE, search.limit)
    return assignment_from_choices(
        data, search.choices, search.lower_ratio_s, status, limit, started, search.iterations, "dinkelbach"
    )


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Search:
    choices: NDArray[np.int64] | None
    choices_ratio_s: float
    lower_ratio_s: float
    limit: Limit | None
    iterations: int
    infeasible: bool = False


def _dinkelbach(data: AssignmentData, options: SolverOptions, deadline: float, *, lower_ratio_s: float) -> _Search:
    """Step (b): Dinkelbach iterations from the best incumbent; ``lower_ratio_s`` is proven."""
    milp = build_milp(data)
    usable = data.fits
    if data.round_limit_s is not None:
        usable = usable & (data.round_part_s + data.global_s[None, :] <= data.round_limit_s)
    most_progress = float(np.where(usable, data.progress, 0.0).max(axis=1).sum())  # P_max
    best, best_ratio = _first_incumbent(data, lower_ratio_s)
    # P_min: an optimum has sum p x = (T + G) / ratio >= fastest round / best ratio, and at least
    # the smallest allowed progress of every group
    least_progress = float(np.where(usable, data.progress, np.inf).min(axis=1).sum())
    if best is not None:
        least_progress = max(least_progress, data.fastest_round_s(usable) / best_ratio)
    ratio, ratio_is_incumbent = (best_ratio, True) if best is not None else (lower_ratio_s, False)
    lower, tolerance = lower_ratio_s, options.relative_gap_tolerance
    if best is not None and best_ratio - lower > tolerance * best_ratio:
        _seed_with(milp, best, options, deadline, data.size_text)
    for step in range(_MAX_DINKELBACH_STEPS + 1):
        if best is not None and best_ratio - lower <= tolerance * best_ratio:
            return _Search(best, best_ratio, lower, None, step)
        remaining_s = deadline - time.perf_counter()
        if remaining_s <= 0:
            return _Search(best, best_ratio, lower, Limit.TIME, step)
        milp.ratio.value = ratio
        outcome = solve_milp(
            milp.problem,
            milp.x,
            options,
            time_limit_s=remaining_s,
            absolute_gap=0.5 * tolerance * ratio * least_progress,
            relative_gap=tolerance,
            size_text=data.size_text,
        )
        if outcome.stopped == "infeasible":
            return _Search(None, math.inf, lower, None, step + 1, infeasible=True)
        if outcome.values is not None:
            found = np.argmax(outcome.values, axis=1)
            found_ratio = data.evaluate(found).ratio_s
            if found_ratio < best_ratio and data.satisfies(found):
                best, best_ratio = found, found_ratio
        if outcome.dual_bound is not None:
            # N - lambda P >= F_lb for every feasible choice, and P_min <= P <= P_max
            spread = most_progress if outcome.dual_bound >= 0 else least_progress
            lower = max(lower, ratio + outcome.dual_bound / spread)
        log.debug("dinkelbach step %d: lambda %.6g, best %.6g, bound %.6g", step + 1, ratio, best_ratio, lower)
        if outcome.stopped == "limit":
            return _Search(best, best_ratio, lower, Limit.TIME, step + 1)
        if ratio_is_incumbent and best_ratio >= ratio * (1 - 1e-12):  # F(lambda) = 0: converged
            return _Search(best, best_ratio, lower, None, step + 1)
        ratio, ratio_is_incumbent = best_ratio, True
    return _Search(best, best_ratio, lower, Limit.NODE, _MAX_DINKELBACH_STEPS)


def _seed_with(milp: Milp, choices: NDArray[np.int64], options: SolverOptions, deadline: float, size_text: str) -> None:
    """Hand ``choices`` to HiGHS as its starting incumbent.

    cvxpy warm-starts HiGHS only from the same problem's previous solution, so solve once with
    x fixed to ``choices`` through the (0) Parameter, then free x again. Measured on 50 groups
    with a binding traffic budget: 5-10x faster proofs than a cold start at the same lambda.
    """
    fixed = np.zeros(milp.x.shape)
    fixed[np.arange(fixed.shape[0]), choices] = 1.0
    milp.start.value = fixed
    try:
        solve_milp(
            milp.problem,
            milp.x,
            options,
            time_limit_s=max(deadline - time.perf_counter(), 1e-3),
            absolute_gap=1e30,
            relative_gap=1.0,
            size_text=size_text,
        )
    finally:
        milp.start.value = np.zeros(milp.x.shape)


def _first_incumbent(data: AssignmentData, lower_ratio_s: float) -> tuple[NDArray[np.int64] | None, float]:
    """The better of the Lagrangian heuristic's choice and the cheapest choice per group, if feasible."""
    candidates = [np.argmin(np.where(data.fits, data.traffic_bytes, np.inf), axis=1)]  # least traffic and time
    priced = lagrangian_incumbent(data, lower_ratio_s=lower_ratio_s)
    if priced is not None:
        candidates.append(priced.choices)
    feasible = [
        (data.evaluate(choices).ratio_s, idx) for idx, choices in enumerate(candidates) if data.satisfies(choices)
    ]
    if not feasible:
        return None, math.inf
    ratio, idx = min(feasible)
    return candidates[idx], ratio


def assignment_from_choices(
    data: AssignmentData,
    choices: NDArray[np.int64],
    lower_ratio_s: float,
    status: SolveStatus,
    limit: Limit | None,
    started: float,
    iterations: int,
    method: str,
) -> Assignment:
    """The :class:`Assignment` of one choice index per group, priced on ``data`` (also for fixed constructions)."""
    rows = np.arange(data.num_groups)
    result = data.evaluate(choices)
    reference = data.reference_rounds
    return Assignment(
        depths=tuple(int(d) for d in data.choice_depth[choices]),
        intra_rounds=tuple(int(t) for t in data.choice_rounds[choices]),
        intra_round_time_s=tuple(float(t) for t in data.intra_round_s[rows, data.choice_depth_idx[choices]]),
        round_time_s=result.round_time_s,
        global_aggregation_s=result.global_s,
        traffic_bytes=result.traffic_bytes,
        rounds_to_target=reference / result.total_progress,
        objective_value=reference * result.ratio_s,
        dual_bound=min(reference * lower_ratio_s, reference * result.ratio_s),
        status=status,
        limit=limit,
        solve_time_s=time.perf_counter() - started,
        iterations=iterations,
        method=method,
    )
