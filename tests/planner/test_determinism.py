"""Plans do not depend on the host's load: the same fleet and seed give the same plan on an idle and a busy host.

Two ways to make the host look different to the planner, so that a search stopping on the clock would
stop elsewhere and be caught:

- *busy*: CPU-burning processes (more than the host has cores) run beside the planner, so each of its
  searches gets a fraction of a core and spends several times the wall time on the same work (CP-SAT's
  own clock included);
- *slow clock*: ``time.perf_counter`` runs ten times faster than real time, as on a host ten times
  slower. Any search of ours that stopped on wall time would do a tenth of its work and return another
  plan; one that stops on work returns the same plan.

The safety caps (``time_limit_s``) are set far above what either needs, and every plan must say it
stopped on work (``Limit.NODE``) or at a proven optimum, never on the clock (``Limit.TIME``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hierfedlora.planner.grouping import group_devices
from hierfedlora.planner.outcomes import Limit, Plan, SolveStatus
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.types import PlanningProblem, SolverOptions
from tests.factories import make_cost_model, make_devices

_CLOCK_SPEED = 10.0  # the slow clock's seconds per real second


@contextlib.contextmanager
def _busy_host() -> Iterator[None]:
    """CPU-burning processes, one more than the host has cores, stopped (by pid) when the block ends."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        time.sleep(0.2)  # let them start burning
        yield
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()


@contextlib.contextmanager
def _slow_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``time.perf_counter`` at ``_CLOCK_SPEED`` times real time (the host looks that much slower)."""
    real = time.perf_counter
    origin = real()
    with monkeypatch.context() as patch:
        patch.setattr(time, "perf_counter", lambda: origin + _CLOCK_SPEED * (real() - origin))
        yield


def _fingerprint(plan: Plan) -> tuple[object, ...]:
    """Everything a plan decides, exactly: members, depths, intra_rounds, objective and bound, its id."""
    groups = tuple((g.device_ids, g.depth, g.intra_rounds) for g in plan.groups)
    return plan.plan_id, groups, plan.objective_value, plan.dual_bound, plan.grouping_objective, plan.limit


def test_flow_plan_is_the_same_on_an_idle_a_busy_host_and_under_a_slow_clock(monkeypatch):
    """80 devices, flow grouping + assignment: one plan idle, beside CPU burners and with a 10x clock; it
    stopped on work (NODE), so the wall-clock safety cap decided nothing."""
    # Arrange
    problem = PlanningProblem(
        devices=make_devices(80, 26, seed=5, alpha=0.3),
        cost_model=make_cost_model(),
        num_groups=8,
        solver=SolverOptions(grouping_method="flow", time_limit_s=600.0, seed=3),
    )
    # Act
    idle = make_plan(problem)
    with _busy_host():
        busy = make_plan(problem)
    with _slow_clock(monkeypatch):
        slow = make_plan(problem)
    # Assert
    assert idle.status is SolveStatus.FEASIBLE and idle.limit is Limit.NODE
    assert _fingerprint(busy) == _fingerprint(idle)
    assert _fingerprint(slow) == _fingerprint(idle)


def test_cpsat_grouping_spends_its_deterministic_time_and_ignores_the_load():
    """24 devices in 3 groups is too hard to prove in 0.2 s of CP-SAT's deterministic time: CP-SAT spends all
    of it (NODE: the flow warm start took none of it) and stops with one incumbent, the same beside CPU
    burners as on an idle host."""
    # Arrange
    solver = SolverOptions(grouping_method="cpsat", time_limit_s=600.0, cpsat_deterministic_time_s=0.2, seed=1)
    problem = PlanningProblem(
        devices=make_devices(24, 26, seed=1), cost_model=make_cost_model(), num_groups=3, solver=solver
    )
    # Act
    idle = group_devices(problem)
    with _busy_host():
        busy = group_devices(problem)
    # Assert
    assert idle.method == "cpsat" and idle.status is SolveStatus.FEASIBLE and idle.limit is Limit.NODE
    assert (busy.members, busy.objective, busy.bound, busy.limit) == (idle.members, idle.objective, idle.bound,
                                                                       idle.limit)  # fmt: skip
