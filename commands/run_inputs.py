"""``hierfedlora run``'s inputs checked and built before anything trains: the plan against its fleet and cost
model, the aggregation rule, the closed loop's re-planner and the Ray executor."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

__all__ = ["build_executor", "build_replanner", "check_plan_inputs", "run_aggregation"]

log = logging.getLogger(__name__)


def run_aggregation(requested: str | None, plan: Any, plan_path: Path) -> str:
    """The run's rule: ``--aggregation`` if given, else the one the plan was priced under (``Plan.aggregation``).

    A rule other than the plan's is refused (the plan's times and traffic would not be the clock's), except
    for a plan priced under FedAvg (every plan file written before plans recorded their rule), which runs
    under the requested rule with a warning, as ``runtime.engine.run_plan`` allows. An unknown name is
    left to ``RunOptions`` to refuse.

    Raises
    ------
    InvalidInputError
        Naming ``--aggregation``: a known rule other than the rule a non-FedAvg plan was priced under.
    """
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.planner.types import AGGREGATION_RULES

    if requested is None or requested == plan.aggregation or requested not in AGGREGATION_RULES:
        return plan.aggregation if requested is None else requested
    if plan.aggregation == "fedavg":
        log.warning(
            "%s was priced under fedavg and runs under %s: the clock charges %s's traffic, so simulated times "
            "differ from the plan's predictions (re-plan with 'hierfedlora plan --aggregation %s')",
            plan_path.name,
            requested,
            requested,
            requested,
        )
        return requested
    expected = f"the rule {plan_path.name} was priced under, {plan.aggregation!r} (or leave it out)"
    hint = f"re-plan with 'hierfedlora plan --aggregation {requested}'"
    raise InvalidInputError([Issue("--aggregation", expected, requested, hint)], "command line")


def build_replanner(args: argparse.Namespace, plan: Any, aggregation: str = "fedavg") -> Any:
    """The closed loop's :class:`Replanner` for ``--replan-every``, over the plan's problem (``None`` without it).

    Its problem prices the run's ``aggregation`` rule, so re-plans are made for it.

    Raises
    ------
    InvalidInputError
        ``--replan-every`` below 1, or a bad ``--problem`` file (before any training starts).
    """
    _check_loop_flags(args)  # always: a bad value is an error even where its flag would go unused
    if args.replan_every is None and not args.self_calibrate:
        for flag, value in (("--problem", args.problem), ("--convergence", args.convergence)):
            if value is not None:
                log.warning("%s is only used with --replan-every or --self-calibrate; ignored", flag)
        return None
    from hierfedlora.commands.common import problem_options, read_json_object
    from hierfedlora.commands.plan import build_problem
    from hierfedlora.planner.feedback import Replanner

    every = args.rounds + 1 if args.replan_every is None else args.replan_every  # self-calibrate alone: probe only
    fields: dict[str, Any] = read_json_object(args.problem) if args.problem else {}
    fields.setdefault("num_groups", len(plan.groups))
    fields.setdefault("batch_size", plan.batch_size)
    steps = {group.local_steps for group in plan.groups}
    if len(steps) == 1:
        fields.setdefault("local_steps", steps.pop())
    fields["aggregation"] = aggregation  # re-plans are priced under the rule the run uses
    fields = problem_options(fields, args.convergence, [])  # --convergence's fields into the problem's
    problem = build_problem(args.fleet, args.cost_model, fields)
    if args.self_calibrate:
        from hierfedlora.validation.selfcal import self_calibrating_replanner

        return self_calibrating_replanner(
            problem,
            num_groups=len(plan.groups),
            every_rounds=every,
            probe_after_round=args.probe_after,
            probe_groups=args.probe_groups,
            prior_weight=args.prior_weight,
            seed=plan.seed,
            absent_rounds=args.absent_rounds,
        )
    return Replanner(problem, every_rounds=every, absent_rounds=args.absent_rounds)


def _check_loop_flags(args: argparse.Namespace) -> None:
    """The closed loop's flags, checked whether or not --replan-every / --self-calibrate use them (``--probe-after
    -1`` or ``--prior-weight nan`` was taken silently when unused)."""
    from hierfedlora.planner.errors import InvalidInputError, Issue

    counts = [("--absent-rounds", args.absent_rounds), ("--probe-after", args.probe_after)]
    counts += [("--probe-groups", args.probe_groups)]
    if args.replan_every is not None:
        counts.insert(0, ("--replan-every", args.replan_every))
    issues = [Issue(flag, "an integer >= 1", value) for flag, value in counts if value < 1]
    if not (math.isfinite(args.prior_weight) and args.prior_weight >= 0):
        issues.append(Issue("--prior-weight", "a finite number >= 0", args.prior_weight))
    if issues:
        raise InvalidInputError(issues, "command line")


def build_executor(args: argparse.Namespace, plan: Any, fleet: Any, cost_model: Any, options: Any) -> Any:
    """The :class:`~hierfedlora.runtime.executors.ray.RayExecutor` for ``--executor ray`` (``None`` in-process).

    Raises
    ------
    InvalidInputError
        Ray flags without ``--executor ray``; a bad ``--ray-actors``; actors that do not fit the cluster.
    """
    from hierfedlora.planner.errors import InvalidInputError, Issue

    if args.executor != "ray":
        given = [
            flag
            for flag, value in (("--ray-address", args.ray_address), ("--ray-actors", args.ray_actors))
            if value is not None  # --ray-actors 0 is given too (it was ignored as falsy)
        ]
        if given:
            raise InvalidInputError([Issue("--executor", f"ray when {flag} is given", args.executor) for flag in given])
        return None
    from hierfedlora.runtime.executors.ray import RayExecutor

    return RayExecutor(plan, fleet, options, cost_model, num_actors=args.ray_actors, address=args.ray_address)


def check_plan_inputs(
    plan: Any, fleet: Any, cost_model: Any, fleet_name: str, cost_name: str, *, allow_cost_mismatch: bool = False
) -> None:
    """Refuse, before anything loads or is written, a plan made for another fleet or cost model, one
    naming devices the fleet lacks, or one leaving some of the fleet's devices out of every group.

    A plan without ``cost_model_sha256`` (a hand-written one) is refused unless ``allow_cost_mismatch``
    (``--allow-cost-mismatch``; then a warning): nothing proves the simulated clock prices what the plan
    was made for. Without ``fleet_sha256`` a warning: the device ids are still checked both ways.

    Raises
    ------
    InvalidInputError
        Naming ``plan.fleet_sha256``, ``plan.cost_model_sha256``, ``groups[k].device_ids`` or ``groups``.
    """
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.planner.io import sha256_of

    issues = []
    fleet_digest = sha256_of(fleet.devices)
    if not plan.fleet_sha256:
        log.warning("the plan has no fleet_sha256: nothing proves it was made for %s", fleet_name)
    elif plan.fleet_sha256 != fleet_digest:
        expected = f"the sha256 of {fleet_name}'s devices ({fleet_digest[:12]}...)"
        issues.append(Issue("plan.fleet_sha256", expected, plan.fleet_sha256, "the plan was made for another fleet"))
    cost_digests = {sha256_of(cost_model), *([cost_model.model_sha256] if cost_model.model_sha256 else [])}
    if not plan.cost_model_sha256 and allow_cost_mismatch:
        log.warning("the plan has no cost_model_sha256: nothing proves it was made for %s", cost_name)
    elif not plan.cost_model_sha256:
        expected = f"the sha256 of the cost model the plan was made with ({cost_name}: {min(cost_digests)[:12]}...)"
        hint = "a plan from 'hierfedlora plan' has it; pass --allow-cost-mismatch to run a plan without it"
        issues.append(Issue("plan.cost_model_sha256", expected, plan.cost_model_sha256, hint))
    elif plan.cost_model_sha256 not in cost_digests:
        expected = f"the sha256 of {cost_name} ({min(cost_digests)[:12]}...)"
        issues.append(
            Issue("plan.cost_model_sha256", expected, plan.cost_model_sha256, "the plan was made for another model")
        )
    positions = {device.device_id: idx for idx, device in enumerate(fleet.devices)}
    for k, group in enumerate(plan.groups):
        unknown = [d for d in group.device_ids if d not in positions]
        if unknown:
            issues.append(Issue(f"groups[{k}].device_ids", f"ids of devices in {fleet_name}", unknown))
    planned = {d for group in plan.groups for d in group.device_ids}
    left_out = [d for d in positions if d not in planned]
    if left_out:  # a plan puts every device in one group: one that skips some was made for another fleet
        shown = ", ".join(left_out[:8]) + (f" and {len(left_out) - 8} more" if len(left_out) > 8 else "")
        expected = f"a plan with every device of {fleet_name} ({len(positions)}) in a group"
        issues.append(Issue("groups", expected, f"{len(left_out)} left out: {shown}"))
    if issues:
        raise InvalidInputError(issues, "plan")
