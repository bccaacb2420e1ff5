"""``hierfedlora run`` of a baseline plan that changes every round: FedGSP-like and FedRA-like follow their
schedules, as ``hierfedlora experiment`` runs them.

``hierfedlora plan --method fedgsp`` writes round 1's plan (one chain of every device) and ``--method
fedra`` round 1's draw of layers. A plan records its maker (``Plan.solver``, ``baseline:fedgsp``); for
these two ``run`` takes the method's own replanner (``validation.baselines.method_replanner``): FedGSP
adds a group after each round up to the most groups ``M_max``, FedRA re-draws every device's layers
from ``(plan seed, round)``. The replanner's problem is built as ``--replan-every``'s is (the fleet,
the cost model, the ``--problem`` file, batch size and local steps defaulting to the plan's). Round 1's
plan does not say ``M_max``, so a FedGSP plan needs ``--problem`` with ``num_groups`` (the value given
to ``hierfedlora plan``; null for every device). A closed loop (``--replan-every``, ``--self-calibrate``)
would replace the method's schedule with HierFedLoRA's plans, so it is refused with these plans.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["SCHEDULED_METHODS", "build_method_replanner", "plan_method"]

SCHEDULED_METHODS = ("fedgsp", "fedra")
"""Baseline methods whose plan changes every round by a schedule of their own."""
_PREFIX = "baseline:"


def plan_method(plan: Any) -> str | None:
    """The baseline method that made ``plan`` (``Plan.solver`` ``baseline:NAME``), or ``None``."""
    solver = str(plan.solver)
    return solver[len(_PREFIX) :] if solver.startswith(_PREFIX) else None


def build_method_replanner(args: argparse.Namespace, plan: Any, aggregation: str | None = None) -> Any:
    """The replanner of a FedGSP or FedRA plan (``None`` for any other plan), pricing its plans under the run's
    ``aggregation`` rule (default: the plan's).

    Raises
    ------
    InvalidInputError
        With such a plan: ``--replan-every`` or ``--self-calibrate``; for FedGSP no ``--problem`` file
        naming ``num_groups``; a bad ``--problem`` file (all before any training starts).
    """
    method = plan_method(plan)
    if method not in SCHEDULED_METHODS:
        return None
    from hierfedlora.commands.common import read_json_object
    from hierfedlora.commands.plan import build_problem
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.validation.baselines import method_replanner

    given = (("--replan-every", args.replan_every is not None), ("--self-calibrate", args.self_calibrate))
    loop = [flag for flag, on in given if on]
    if loop:
        expected = f"absent with a {method} plan (it follows its own schedule every round, not HierFedLoRA's loop)"
        raise InvalidInputError([Issue(flag, expected, "given") for flag in loop])
    fields: dict[str, Any] = read_json_object(args.problem) if args.problem else {}
    if method == "fedgsp" and "num_groups" not in fields:
        expected = (
            "a PlanningProblem JSON naming num_groups, the most groups FedGSP grows to (as given to "
            "'hierfedlora plan'; null for every device): round 1's plan has one group"
        )
        raise InvalidInputError([Issue("--problem", expected, str(args.problem) if args.problem else "none")])
    fields.setdefault("batch_size", plan.batch_size)
    steps = {group.local_steps for group in plan.groups}
    if len(steps) == 1:
        fields.setdefault("local_steps", steps.pop())
    fields["aggregation"] = plan.aggregation if aggregation is None else aggregation  # the rule the run uses
    problem = build_problem(args.fleet, args.cost_model, fields)
    return method_replanner(method, problem, seed=plan.seed)
