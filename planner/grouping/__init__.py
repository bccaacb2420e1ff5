"""Near-IID grouping: split devices into K groups whose pooled label mix is close to the fleet's.

Formulation
-----------
Sets: devices ``i = 1..N``, groups ``k = 1..K``, classes ``c = 1..C``.

Data: ``n_ic`` device i's samples of class c; ``S_i = sum_c n_ic``; ``N_c = sum_i n_ic``;
``S = sum_i S_i``; ``P_c = N_c / S`` the fleet's share of class c; ``s_i`` device i's
``compute_scale``. K is ``problem.num_groups``, or ``max(1, round(N / 10))`` moved into
``[ceil(N / max_group_size), floor(N / min_group_size)]`` when a bound is set (Python's ``round``: halves go to even).

Variables: ``x_ik in {0, 1}``, 1 when device i is in group k. Group totals
``n_kc = sum_i n_ic x_ik`` and ``S_k = sum_i S_i x_ik``.

Constraints:

(1) each device in exactly one group:   ``sum_k x_ik = 1``  for every i
(2) group sizes:                        ``a <= sum_i x_ik <= b``; ``(a, b)`` from
                                        ``grouping.model.size_bounds``: balanced
                                        ``floor(N/K)..ceil(N/K)`` unless a bound is set
(3) group samples (when set):           ``min_group_samples <= S_k <= max_group_samples``
(4) speed band (when set):              ``max_{i in k} s_i <= max_speed_ratio * min_{i in k} s_i``
(5) symmetry breaking (CP-SAT only):    groups ordered by their smallest member,
                                        ``x_ik <= sum_{j < i} x_j,k-1`` for k >= 2

Objective: the sample-weighted L1 skew, linear in ``x`` through ``t_kc >= |n_kc - P_c S_k|``::

    minimise  (1 / S) sum_k sum_c |n_kc - P_c S_k|  +  w sum_k (log max_{i in k} s_i - log min_{i in k} s_i)

The first term equals ``sum_k (S_k / S) * L1(group k, fleet)``; ``w`` is
``problem.speed_spread_weight`` (the term is absent when ``w = 0``). CP-SAT works in integers:
``S * n_kc - N_c * S_k`` is an integer, so the first term is ``sum |.| / S**2`` exactly
(``grouping.cpsat`` explains the speed term).

Solvers (``problem.solver.grouping_method``): ``"cpsat"``, the exact model above
(:mod:`~hierfedlora.planner.grouping.cpsat`); ``"flow"``, min-cost dealing plus local search for
thousands of devices (:mod:`~hierfedlora.planner.grouping.flow`); ``"random"``, the baseline;
``"auto"``, cpsat up to ``exact_grouping_max_devices`` devices, flow beyond. Every one checks
the arithmetic of (2)-(4) first (``grouping.model.check_feasibility``) and reports a proven
lower bound.

Note that the objective never rewards balance: merging two groups never raises it (triangle
inequality), so with loose size bounds an optimum may pair many small groups with one large
one. That is why sizes default to balanced (``floor(N/K)..ceil(N/K)``); setting
``min_group_size`` or ``max_group_size`` replaces that default with the given bounds.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import time
from collections.abc import Sequence

from hierfedlora.planner.errors import HierFedLoraError, InvalidInputError, Issue, NoSolutionError
from hierfedlora.planner.grouping.cpsat import solve_cpsat
from hierfedlora.planner.grouping.flow import solve_flow, solve_random
from hierfedlora.planner.grouping.model import (
    FAMILY_NUM_GROUPS,
    FAMILY_SAMPLES,
    FAMILY_SIZES,
    FAMILY_SPEED_BAND,
    GroupingData,
    check_feasibility,
    exact_objective,
    grouping_data,
    resolve_num_groups,
)
from hierfedlora.planner.outcomes import Grouping, SolveStatus
from hierfedlora.planner.types import PlanningProblem, SolverOptions

__all__ = [
    "FAMILY_NUM_GROUPS",
    "FAMILY_SAMPLES",
    "FAMILY_SIZES",
    "FAMILY_SPEED_BAND",
    "group_devices",
    "grouping_method",
    "grouping_objective",
    "random_grouping",
    "resolve_num_groups",
]

logger = logging.getLogger(__name__)

_WARM_START_SHARE = 0.25  # of the time limit, at most, for the flow start that CP-SAT is handed


def grouping_method(problem: PlanningProblem) -> str:
    """The solver ``group_devices`` will use: ``"auto"`` resolved by the number of devices."""
    method = problem.solver.grouping_method
    if method != "auto":
        return method
    return "cpsat" if len(problem.devices) <= problem.solver.exact_grouping_max_devices else "flow"


def group_devices(problem: PlanningProblem) -> Grouping:
    """Split ``problem.devices`` into near-IID groups (formulation: module docstring).

    Parameters
    ----------
    problem : PlanningProblem
        Devices, K and the bounds (2)-(4), ``speed_spread_weight`` and the solver options
        (``grouping_method``, ``time_limit_s`` in seconds, ``threads``, ``seed``,
        ``relative_gap_tolerance``).

    Returns
    -------
    Grouping
        ``members`` as positions into ``problem.devices``; ``objective`` and a proven
        lower ``bound``; ``status`` OPTIMAL, or FEASIBLE with ``limit`` set. ``method``
        names what produced ``members``: ``"cpsat"``; ``"flow"``, also under cpsat when
        flow's bound already proves its grouping optimal or CP-SAT finds none in the time
        left; or ``"random"``.

    Raises
    ------
    InvalidInputError
        Devices disagree on the number of classes.
    InfeasibleError
        No assignment meets the constraints; ``conflicting`` names the families
        (``num_groups``, ``group_sizes``, ``group_samples``, ``speed_band``).
    NoSolutionError
        No assignment found before the time limit (cpsat), or the heuristics could not
        meet the sample bounds (flow, random).
    SolverFailedError
        CP-SAT failed; no OR-Tools exception escapes.

    Examples
    --------
    Two classes; pairing each class-0 device with the class-1 device of the same size
    gives two groups with the fleet's 50/50 mix, so the optimum is 0:

    >>> from hierfedlora.planner.types import CostModel, DeviceProfile
    >>> cost = CostModel(model_name="toy", num_layers=1, batch_size=1, seq_len=1, embedding_forward_s=0.0,
    ...     layer_forward_s=(0.01,), layer_backward_s=(0.01,), head_step_s=0.0, layer_optimizer_s=0.0,
    ...     adapter_bytes_per_layer=1, head_bytes=0, activation_bytes_per_sample_per_layer=1,
    ...     optimizer_bytes_per_layer=0, base_model_bytes=1)
    >>> devices = tuple(DeviceProfile(device_id=f"d{i}", label_counts=counts, compute_scale=1.0,
    ...     memory_bytes=2**30, uplink_mbps=10.0, downlink_mbps=10.0)
    ...     for i, counts in enumerate([(10, 0), (0, 10), (20, 0), (0, 20)]))
    >>> grouping = group_devices(PlanningProblem(devices=devices, cost_model=cost, num_groups=2, min_group_size=2))
    >>> grouping.members, grouping.objective, grouping.status.name
    (((0, 1), (2, 3)), 0.0, 'OPTIMAL')
    """
    method = grouping_method(problem)
    if method == "random":
        return random_grouping(problem, problem.solver.seed)
    data = grouping_data(problem)
    check_feasibility(data)
    logger.info(
        "grouping %s with %s (time limit %.1f s, seed %d)",
        data.size_text(),
        method,
        problem.solver.time_limit_s,
        problem.solver.seed,
    )
    if method == "flow":
        return solve_flow(data, problem.solver)
    return _solve_exact(data, problem.solver)


def _solve_exact(data: GroupingData, options: SolverOptions) -> Grouping:
    """CP-SAT, started from a flow solution. Both stop on work: flow on its work budget, CP-SAT on
    ``options.cpsat_deterministic_time_s`` of deterministic time, all of it CP-SAT's own. Of the
    wall-clock safety cap, flow may use at most ``_WARM_START_SHARE`` and CP-SAT gets the rest.

    A flow solution that its bound proves optimal, or one CP-SAT cannot better in the time
    left because it finds nothing, is returned as is (``method="flow"``).
    """
    started = time.perf_counter()
    try:
        warm_options = dataclasses.replace(options, time_limit_s=_WARM_START_SHARE * options.time_limit_s)
        warm: Grouping | None = solve_flow(data, warm_options)
    except HierFedLoraError:  # flow could not meet the sample bounds; CP-SAT decides
        warm = None
    if warm is not None and warm.status is SolveStatus.OPTIMAL:  # its bound already proves it
        return warm
    hint = None
    if warm is not None:
        hint = [0] * data.num_devices
        for k, group in enumerate(warm.members):  # members are in CP-SAT's symmetry-broken order (5)
            for i in group:
                hint[i] = k
    remaining = max(options.time_limit_s - (time.perf_counter() - started), 1e-3)
    try:
        return solve_cpsat(data, dataclasses.replace(options, time_limit_s=remaining), hint)
    except NoSolutionError:
        if warm is None:
            raise
        logger.warning("cpsat found no grouping in %.3f s; returning the flow grouping it started from", remaining)
        return dataclasses.replace(warm, solve_time_s=time.perf_counter() - started)


def random_grouping(problem: PlanningProblem, seed: int) -> Grouping:
    """A random grouping that respects the constraints: the ``"random"`` baseline.

    Devices are shuffled into groups of sizes as even as (2) allows (uniform over the
    assignments with those sizes); a speed band (4) or sample bounds (3) are then met as
    ``grouping.flow.solve_random`` describes. The same seed gives the same grouping.

    Raises
    ------
    InfeasibleError, NoSolutionError
        As :func:`group_devices`.
    """
    data = grouping_data(problem)
    check_feasibility(data)
    return solve_random(data, seed, problem.solver.time_limit_s)


def grouping_objective(problem: PlanningProblem, members: Sequence[Sequence[int]]) -> float:
    """The grouping objective (module docstring) of any assignment, exactly as the solvers report it.

    ``members[k]`` lists group k's device positions; groups may be empty and need not cover
    every device (the verifier checks coverage); ``P_c`` is always the whole fleet's.

    Raises
    ------
    InvalidInputError
        A position outside ``0..N-1`` or listed twice.
    """
    num_devices, seen, issues = len(problem.devices), set(), []
    for k, group in enumerate(members):
        for j, position in enumerate(group):
            if not (
                isinstance(position, numbers.Integral)
                and not isinstance(position, bool)
                and 0 <= position < num_devices
            ):
                issues.append(Issue(f"members[{k}][{j}]", f"a device position in 0..{num_devices - 1}", position))
            elif position in seen:
                issues.append(Issue(f"members[{k}][{j}]", "a device listed in one group only", position))
            seen.add(int(position))
    if issues:
        raise InvalidInputError(issues)
    return exact_objective(grouping_data(problem, num_groups=max(1, len(members))), members)
