"""The exact grouping model in OR-Tools CP-SAT (formulation: :mod:`hierfedlora.planner.grouping`).

Blocks follow the formulation: variables ``x[i][k]``; (1) each device in one group;
(2) group sizes; (3) group samples; (4) speed band; (5) symmetry breaking; the objective.

Integers, exactly. CP-SAT needs an integer objective. The L1 part is scaled by
``F = R * S**2``: each ``t_kc >= |r_kc|`` with ``r_kc = sum_i E_ic x_ik`` is an integer.
The speed term ``w * sum_k (log max_k - log min_k)`` is not: every distinct scale ``u_l``
gets the integer ``V_l = round(F * w * log u_l)``, so a group's integer spread differs
from ``F * w * spread_k`` by at most 1 and the integer objective from ``F`` times the true
one by at most ``K``. The bound reported is ``(CP-SAT's bound - K) / F`` then (``R`` makes
that slack at most ``1e-6 * K``); without a speed term it is exact. The objective
reported is always recomputed exactly from the assignment.

Determinism: the search stops on work, ``SolverOptions.cpsat_deterministic_time_s`` of CP-SAT's
deterministic time (``max_deterministic_time``: a count of its work that tracks seconds on an
idle core), never on the clock. With one worker (``threads = 1``, the default) and a fixed
``random_seed`` the same model then gives the same answer on a loaded or an idle host. More
workers run CP-SAT's interleaved search (``interleave_search``), which ``sat_parameters.proto``
states is deterministic whatever the number of workers but marks experimental. The wall-clock
``time_limit_s`` is passed as ``max_time_in_seconds``, a safety cap only; when it, not the
work limit, ended the search, the grouping says so (``Limit.TIME``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
from ortools.sat.python import cp_model

from hierfedlora.planner.errors import InfeasibleError, NoSolutionError, SolverFailedError
from hierfedlora.planner.grouping.model import (
    FAMILY_NUM_GROUPS,
    FAMILY_SAMPLES,
    FAMILY_SIZES,
    FAMILY_SPEED_BAND,
    GroupingData,
    exact_objective,
    lower_bound,
)
from hierfedlora.planner.outcomes import Grouping, Limit, SolveStatus
from hierfedlora.planner.types import SolverOptions

__all__ = ["solve_cpsat"]

logger = logging.getLogger(__name__)

_MAX_OBJECTIVE = 2**60  # CP-SAT's integers are int64; keep the objective's range well inside


def _active_families(data: GroupingData) -> list[str]:
    families = []
    if data.min_size > 1 or data.max_size < data.num_devices:
        families.append(FAMILY_SIZES)
    if data.min_samples > 0 or data.max_samples is not None:
        families.append(FAMILY_SAMPLES)
    if data.max_speed_ratio is not None:
        families.append(FAMILY_SPEED_BAND)
    return families


def _objective_unit(data: GroupingData) -> int:
    """``F``: integer objective units per objective unit (module docstring)."""
    squared = data.total_samples**2
    unit = squared if not data.has_speed_term else squared * max(1, math.ceil(1e6 / squared))
    log_range = math.log(float(data.scales.max() / data.scales.min())) if data.has_speed_term else 0.0
    if unit * (2 + data.speed_weight * data.num_groups * (log_range + 1)) > _MAX_OBJECTIVE:
        raise SolverFailedError(
            "cpsat",
            "the objective does not fit CP-SAT's 64-bit integers "
            "(too many samples or too large a speed_spread_weight); use grouping_method='flow'",
            data.size_text(),
        )
    return unit


def _build_model(
    data: GroupingData, families: Sequence[str], *, with_objective: bool, hint: Sequence[int] | None
) -> tuple[cp_model.CpModel, list[list[cp_model.IntVar]], int]:
    """The CP-SAT model with the given constraint families; returns it, ``x`` and ``F``."""
    n, k_count = data.num_devices, data.num_groups
    groups = range(k_count)
    model = cp_model.CpModel()
    # Variables: x[i][k] = 1 when device i is in group k
    x = [[model.new_bool_var(f"x[{i},{k}]") for k in groups] for i in range(n)]
    # (1) each device in exactly one group
    for i in range(n):
        model.add_exactly_one(x[i])
    # (2) min_group_size <= |group| <= max_group_size; groups stay non-empty without the family
    size_lo, size_hi = (data.min_size, data.max_size) if FAMILY_SIZES in families else (1, n)
    for k in groups:
        model.add_linear_constraint(sum(x[i][k] for i in range(n)), size_lo, size_hi)
    # (3) min_group_samples <= S_k <= max_group_samples
    if FAMILY_SAMPLES in families:
        samples = [int(s) for s in data.samples]
        high = data.max_samples if data.max_samples is not None else data.total_samples
        for k in groups:
            model.add_linear_constraint(
                cp_model.LinearExpr.weighted_sum([x[i][k] for i in range(n)], samples), data.min_samples, high
            )
    # (4) speed band, through "has a member at level <= l" and "at level >= l" indicators
    levels, level_of = np.unique(data.scales, return_inverse=True)
    band = FAMILY_SPEED_BAND in families and data.max_speed_ratio is not None
    below, above = _level_indicators(model, x, level_of, len(levels)) if band or data.has_speed_term else ([], [])
    if band:
        ratio = float(data.max_speed_ratio)  # type: ignore[arg-type]
        for low in range(len(levels)):
            clash = int(np.searchsorted(levels, ratio * levels[low], side="right"))  # first level > ratio * u_low
            if clash < len(levels):
                for k in groups:
                    model.add_bool_or([below[k][low].Not(), above[k][clash].Not()])
    # (5) symmetry breaking: groups ordered by smallest member (device i opens at most group i)
    for i in range(n):
        for k in groups:
            if k > i:
                model.add(x[i][k] == 0)
            elif k > 0:
                model.add(x[i][k] <= sum(x[j][k - 1] for j in range(i)))
    unit = 1
    if with_objective:
        unit = _objective_unit(data)
        model.minimize(_objective(model, data, x, below, above, levels, unit))
    if hint is not None:
        for i, group in enumerate(hint):
            for k in groups:
                model.add_hint(x[i][k], group == k)
    return model, x, unit


def _level_indicators(
    model: cp_model.CpModel, x: list[list[cp_model.IntVar]], level_of: np.ndarray, num_levels: int
) -> tuple[list[list[cp_model.IntVar]], list[list[cp_model.IntVar]]]:
    """``below[k][l]``: group k has a member at speed level <= l; ``above[k][l]``: at level >= l.

    Only implied by ``x`` (member => indicator); minimising the spread makes them tight,
    and for the band an indicator left at 1 only restricts.
    """
    num_groups = len(x[0])
    below = [[model.new_bool_var(f"below[{k},{v}]") for v in range(num_levels)] for k in range(num_groups)]
    above = [[model.new_bool_var(f"above[{k},{v}]") for v in range(num_levels)] for k in range(num_groups)]
    for k in range(num_groups):
        for i, level in enumerate(level_of):
            model.add_implication(x[i][k], below[k][int(level)])
            model.add_implication(x[i][k], above[k][int(level)])
        for level in range(1, num_levels):
            model.add_implication(below[k][level - 1], below[k][level])
            model.add_implication(above[k][level], above[k][level - 1])
    return below, above


def _objective(
    model: cp_model.CpModel,
    data: GroupingData,
    x: list[list[cp_model.IntVar]],
    below: list[list[cp_model.IntVar]],
    above: list[list[cp_model.IntVar]],
    levels: np.ndarray,
    unit: int,
) -> cp_model.LinearExprT:
    """``(F / S**2) sum_kc t_kc + sum_k integer spread_k`` (module docstring)."""
    n = data.num_devices
    terms = []
    for k in range(data.num_groups):
        column = [x[i][k] for i in range(n)]
        for c in range(data.counts.shape[1]):
            if data.class_totals[c] == 0:
                continue  # r_kc = 0 for every assignment
            cap = int(data.total_samples * data.class_totals[c])
            residual = cp_model.LinearExpr.weighted_sum(column, [int(e) for e in data.excess[:, c]])
            t = model.new_int_var(0, cap, f"t[{k},{c}]")
            model.add(t >= residual)
            model.add(t >= -residual)
            terms.append(t)
    objective = (unit // data.total_samples**2) * sum(terms)
    if data.has_speed_term:
        # spread_k = sum_l (V_{l+1} - V_l) [min_k <= u_l < max_k] = sum_l gap_l (below[k][l] + above[k][l+1] - 1)
        ints = [round(unit * data.speed_weight * math.log(float(u))) for u in levels]
        for k in range(data.num_groups):
            for level in range(len(levels) - 1):
                gap = ints[level + 1] - ints[level]
                objective += gap * (below[k][level] + above[k][level + 1] - 1)
    return objective


def _configure(solver: cp_model.CpSolver, options: SolverOptions, time_limit_s: float, work_limit: float) -> None:
    """A deterministic search: ``work_limit`` of deterministic time, a fixed worker count and seed;
    ``time_limit_s`` of wall clock as the safety cap (module docstring)."""
    solver.parameters.max_deterministic_time = work_limit
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = options.threads
    solver.parameters.interleave_search = options.threads > 1
    solver.parameters.random_seed = options.seed
    solver.parameters.relative_gap_limit = options.relative_gap_tolerance


def _stopped_by(solver: cp_model.CpSolver, work_limit: float) -> Limit:
    """NODE when the deterministic work limit was spent, TIME when the wall-clock cap struck first."""
    return Limit.NODE if solver.deterministic_time >= work_limit else Limit.TIME


def solve_cpsat(data: GroupingData, options: SolverOptions, hint: Sequence[int] | None = None) -> Grouping:
    """Solve the grouping exactly with CP-SAT; ``hint[i]`` is a starting group for device i.

    Raises
    ------
    InfeasibleError
        Proven infeasible; ``conflicting`` from a deletion filter over the families.
    NoSolutionError
        The time limit passed before any assignment was found.
    SolverFailedError
        CP-SAT raised, rejected the model, or the objective cannot be scaled to int64.
    """
    started = time.perf_counter()
    families = _active_families(data)
    try:
        model, x, unit = _build_model(data, families, with_objective=True, hint=hint)
        solver = cp_model.CpSolver()
        _configure(solver, options, options.time_limit_s, options.cpsat_deterministic_time_s)
        status = solver.solve(model)
    except SolverFailedError:
        raise
    except Exception as exc:  # ortools raises many types; none may escape
        raise SolverFailedError("cpsat", f"{type(exc).__name__}: {exc}", data.size_text()) from exc
    elapsed = time.perf_counter() - started
    logger.info(
        "cpsat grouping: %s in %.3f s, %.3f of %.3g deterministic s (%s)",
        solver.status_name(status),
        elapsed,
        solver.deterministic_time,
        options.cpsat_deterministic_time_s,
        data.size_text(),
    )
    limit = _stopped_by(solver, options.cpsat_deterministic_time_s)
    if status == cp_model.INFEASIBLE:
        conflicting = _deletion_filter(data, families, options)
        raise InfeasibleError(
            f"no grouping of {data.size_text()} satisfies the constraints (CP-SAT proved it)",
            conflicting,
            hint="relax one of the conflicting families",
        )
    if status == cp_model.UNKNOWN:
        raise NoSolutionError(limit, elapsed, f"cpsat grouping of {data.size_text()}")
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolverFailedError("cpsat", f"status {solver.status_name(status)}: {model.validate()}", data.size_text())
    group_of = [next(k for k in range(data.num_groups) if solver.boolean_value(x[i][k])) for i in range(len(x))]
    members = tuple(tuple(i for i, g in enumerate(group_of) if g == k) for k in range(data.num_groups))
    objective = exact_objective(data, members)
    slack = data.num_groups if data.has_speed_term else 0
    solver_bound = solver.best_objective_bound
    bound = lower_bound(data)
    if math.isfinite(solver_bound):
        bound = max(bound, (math.floor(solver_bound) - slack) / unit)
    bound = min(bound, objective)
    optimal = status == cp_model.OPTIMAL or bound >= objective
    return Grouping(
        members=tuple(sorted(members)),
        objective=objective,
        bound=bound,  # min() above only absorbs float rounding: the bound is valid
        status=SolveStatus.OPTIMAL if optimal else SolveStatus.FEASIBLE,
        limit=None if optimal else limit,
        solve_time_s=elapsed,
        method="cpsat",
    )


def _deletion_filter(data: GroupingData, families: list[str], options: SolverOptions) -> tuple[str, ...]:
    """Drop one family at a time; keep it out while the rest stays infeasible (python-mip's conflict idea).

    A re-solve that ends undecided keeps its family in the conflict.
    """
    conflict = list(families)
    budget_s = max(1.0, options.time_limit_s / 4)
    work = max(0.25, options.cpsat_deterministic_time_s / 4)
    for family in families:
        trial = [f for f in conflict if f != family]
        try:
            model, _, _ = _build_model(data, trial, with_objective=False, hint=None)
            solver = cp_model.CpSolver()
            _configure(solver, options, budget_s, work)
            status = solver.solve(model)
        except Exception as exc:  # a failed re-solve leaves the family in
            logger.warning("deletion filter re-solve without %s failed: %s", family, exc)
            continue
        if status == cp_model.INFEASIBLE:
            conflict = trial
    return tuple(conflict) or (FAMILY_NUM_GROUPS,)
