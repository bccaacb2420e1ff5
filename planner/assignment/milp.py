"""The assignment MILP: building it, calling HiGHS through cvxpy, and explaining an infeasible one.

:func:`build_milp` builds the formulation of :mod:`hierfedlora.planner.assignment` (read it
there) block by block in the same order, constraints marked ``# (k)``, with lambda and a
seeding choice as cvxpy Parameters, so Dinkelbach re-solves one compiled problem.

:func:`solve_milp` runs one solve with the user's :class:`SolverOptions` and turns whatever
comes back into a :class:`MilpOutcome`: ``"optimal"``, ``"limit"`` (with or without an
incumbent) or ``"infeasible"``. Any exception cvxpy or HiGHS raises, and any status we cannot
interpret, becomes a :class:`SolverFailedError` naming the solver and the problem's size: no
cvxpy exception escapes.

:func:`deletion_filter` finds the constraint families that conflict (drop one, re-solve,
leave it out if still infeasible), and :func:`explain_conflict` turns them into an
:class:`InfeasibleError` with the numbers that show the conflict.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from typing import Literal

import cvxpy as cp
import highspy
import numpy as np
from cvxpy import settings as cvxpy_status
from cvxpy.atoms.affine.binary_operators import multiply
from cvxpy.atoms.affine.sum import sum as cvx_sum  # imported where defined: mypy --strict misses cp.sum
from numpy.typing import NDArray

from hierfedlora.planner.assignment.data import AssignmentData
from hierfedlora.planner.checks import format_bytes
from hierfedlora.planner.errors import InfeasibleError, SolverFailedError
from hierfedlora.planner.types import SolverOptions

__all__ = [
    "MILP_FAMILIES",
    "SOLVER_NAME",
    "Milp",
    "MilpOutcome",
    "build_milp",
    "deletion_filter",
    "explain_conflict",
    "solve_milp",
]

MILP_FAMILIES = ("memory", "round_budget", "traffic_budget")
"""Constraint families (2), (4), (5) that the deletion filter may name."""

SOLVER_NAME = "HiGHS (via cvxpy)"
_HIGHS_SOLUTION_FEASIBLE = 2  # HighsInfo.primal_solution_status: 0 none, 1 infeasible, 2 feasible
_HIGHS_MAX_SEED = 2**31 - 1  # random_seed is a C int
# Measured on 50 groups x 24 choices with a binding traffic budget: restarts and the RINS/RENS
# sub-MIP heuristics took 2-5x longer to the same proven optimum; Dinkelbach warm-starts
# every solve from the previous incumbent, so HiGHS needs them least here.
_HIGHS_TUNING = {"mip_allow_restart": False, "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False}
_INFEASIBLE = (cvxpy_status.INFEASIBLE, cvxpy_status.INFEASIBLE_INACCURATE, cvxpy_status.INFEASIBLE_OR_UNBOUNDED)
_OPTIMAL = (cvxpy_status.OPTIMAL, cvxpy_status.OPTIMAL_INACCURATE)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class MilpOutcome:
    """One HiGHS solve: why it stopped, the incumbent (if any) and HiGHS's proven bound."""

    stopped: Literal["optimal", "limit", "infeasible"]
    values: NDArray[np.float64] | None  # the incumbent x, or None
    dual_bound: float | None  # a proven lower bound on the MILP's objective, or None
    solve_time_s: float


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Milp:
    problem: cp.Problem
    x: cp.Variable
    ratio: cp.Parameter  # lambda
    start: cp.Parameter  # a choice to fix x to for one solve; zeros otherwise


def build_milp(data: AssignmentData, families: Sequence[str] = MILP_FAMILIES) -> Milp:
    """The Dinkelbach MILP ``min T + G - lambda · sum p x`` over (1)-(5), lambda a Parameter.

    ``families`` selects which of (2), (4), (5) to include (the deletion filter drops some);
    (4) and (5) are left out anyway when their budget is absent.
    """
    # Variables
    x = cp.Variable((data.num_groups, data.num_choices), boolean=True)
    round_part = cp.Variable(nonneg=True)  # T
    global_s = cp.Variable(nonneg=True)  # G
    ratio = cp.Parameter(nonneg=True, value=0.0)  # lambda
    start = cp.Parameter((data.num_groups, data.num_choices), nonneg=True, value=np.zeros(x.shape))
    # Constraints
    constraints = [
        x >= start,  # (0) no constraint while start = 0; fixes x for the solve that seeds HiGHS
        cvx_sum(x, axis=1) == 1,  # (1) one choice per group
        round_part >= cvx_sum(multiply(data.round_part_s, x), axis=1),  # (3) T is the slowest group's
        global_s >= x @ data.global_s,  # (3') G is the deepest group's global aggregation
    ]
    if "memory" in families and not data.fits.all():
        constraints.append(multiply(x, (~data.fits).astype(float)) == 0)  # (2) memory
    if "round_budget" in families and data.round_budget_s is not None:
        constraints.append(round_part + global_s <= data.round_budget_s)  # (4) round budget
    if "traffic_budget" in families and data.traffic_budget_bytes is not None:
        share_of_budget = data.traffic_bytes / data.traffic_budget_bytes  # scaled to ~1 for HiGHS
        constraints.append(cvx_sum(multiply(share_of_budget, x)) <= 1.0)  # (5) traffic budget
    # Objective: one Dinkelbach step of R0 (T + G) / sum p x (R0 is a constant factor)
    objective = cp.Minimize(round_part + global_s - ratio * cvx_sum(multiply(data.progress, x)))
    return Milp(cp.Problem(objective, constraints), x, ratio, start)


def solve_milp(
    problem: cp.Problem,
    x: cp.Variable,
    options: SolverOptions,
    *,
    time_limit_s: float,
    absolute_gap: float,
    relative_gap: float,
    size_text: str,
) -> MilpOutcome:
    """Solve ``problem`` with HiGHS, warm-starting from its previous solve; map the outcome.

    Raises
    ------
    SolverFailedError
        For any exception from cvxpy or HiGHS, or a status that is not optimal, a limit or
        infeasible (``from`` the original exception).
    """
    try:
        with warnings.catch_warnings():
            # cvxpy warns "Solution may be inaccurate" at a time limit; the status says so already
            # (and numpy may warn while cvxpy unpacks an empty solution).
            warnings.simplefilter("ignore")
            # HiGHS keeps one thread pool per process; `threads` only takes effect on a fresh one.
            # (Not safe against another thread solving with HiGHS at the same moment.)
            highspy.Highs.resetGlobalScheduler(True)
            problem.solve(  # type: ignore[no-untyped-call]
                solver=cp.HIGHS,
                warm_start=True,
                time_limit=float(max(time_limit_s, 1e-3)),
                mip_rel_gap=float(relative_gap),
                mip_abs_gap=float(max(absolute_gap, 1e-12)),
                threads=int(options.threads),
                random_seed=int(options.seed % _HIGHS_MAX_SEED),
                **_HIGHS_TUNING,
            )
            status, stats = problem.status, problem.solver_stats
            values = None if x.value is None else np.array(x.value, dtype=float)
    except Exception as exc:  # a solver crash must reach the user as our error, with its cause
        raise SolverFailedError(SOLVER_NAME, f"{type(exc).__name__}: {exc}", size_text) from exc
    solve_time_s = float(stats.solve_time or 0.0) if stats is not None else 0.0
    if status in _INFEASIBLE:
        return MilpOutcome("infeasible", None, None, solve_time_s)
    if status not in _OPTIMAL and status != cvxpy_status.USER_LIMIT:
        raise SolverFailedError(SOLVER_NAME, f"unexpected status {status!r}", size_text)
    info = stats.extra_stats if stats is not None else None
    has_incumbent = status in _OPTIMAL or getattr(info, "primal_solution_status", 0) == _HIGHS_SOLUTION_FEASIBLE
    bound = getattr(info, "mip_dual_bound", None)
    reported = getattr(info, "objective_function_value", None)
    if bound is not None and has_incumbent and problem.value is not None and reported is not None:
        bound += float(problem.value) - float(reported)  # cvxpy's constant offset, if any
    return MilpOutcome(
        "optimal" if status in _OPTIMAL else "limit",
        values if has_incumbent else None,
        float(bound) if bound is not None and math.isfinite(bound) else None,
        solve_time_s,
    )


def deletion_filter(data: AssignmentData, options: SolverOptions, deadline: float) -> tuple[str, ...]:
    """The families of (2), (4), (5) that together admit no choice: drop each, keep it if needed.

    A family whose removal leaves the problem infeasible is not needed for the conflict and
    stays out. A re-solve that cannot decide before the deadline keeps its family (it may
    be needed). The result is one irreducible conflict; others may exist.
    """
    present = (True, data.round_budget_s is not None, data.traffic_budget_bytes is not None)
    active = [family for family, there in zip(MILP_FAMILIES, present, strict=True) if there]
    kept = list(active)
    for family in active:
        trial = [other for other in kept if other != family]
        milp = build_milp(data, trial)
        outcome = solve_milp(
            milp.problem,
            milp.x,
            options,
            time_limit_s=max(deadline - time.perf_counter(), 1.0),
            absolute_gap=1e30,  # feasibility is all we ask
            relative_gap=1.0,
            size_text=data.size_text,
        )
        if outcome.stopped == "infeasible":
            kept = trial
    return tuple(kept)


def explain_conflict(data: AssignmentData, families: tuple[str, ...]) -> InfeasibleError:
    """An :class:`InfeasibleError` for the kept ``families``, each with the numbers that show it."""
    memory_kept = "memory" in families
    usable = data.fits if memory_kept else np.ones_like(data.fits)
    reasons, hints = [], []
    if memory_kept:
        short = np.flatnonzero(~data.fits.any(axis=1))
        for k in short[:3]:
            need, have = format_bytes(data.memory_need_bytes[0]), format_bytes(data.group_memory_bytes[k])
            reasons.append(f"group {k} needs {need} at depth {data.depths[0]} and its smallest member has {have}")
        if len(short):
            hints.append("move the devices with little memory, or lower batch_size")
    if "round_budget" in families and data.round_budget_s is not None:
        fastest_s = data.fastest_round_s(usable)
        reasons.append(
            f"the fastest round these groups allow is {fastest_s:.4g} s > round_budget_s = {data.round_budget_s:g} s"
        )
        hints.append(f"raise round_budget_s to at least {fastest_s:.4g} s")
    if "traffic_budget" in families and data.traffic_budget_bytes is not None:
        least = float(np.where(usable, data.traffic_bytes, np.inf).min(axis=1).sum())
        reasons.append(
            f"the least traffic these groups allow is {least:,.0f} bytes per round > "
            f"traffic_budget_bytes = {data.traffic_budget_bytes:,.0f}"
        )
        hints.append(f"raise traffic_budget_bytes to at least {least:,.0f}")
    joined = " and ".join(families)
    reason = f"no depth and intra_rounds for the {data.num_groups} groups meet {joined} together"
    if reasons:
        reason += ": " + "; ".join(reasons)
    return InfeasibleError(reason, conflicting=families, hint="; ".join(hints))
