"""``hierfedlora plan``: fleet + cost model (+ options) -> Plan JSON and a readable summary."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from hierfedlora.commands.common import add_problem_settings, int_list, problem_options, read_json_object
from hierfedlora.validation.baseline_settings import METHODS

__all__ = ["METHOD_CHOICES", "build_problem", "register"]

METHOD_CHOICES = ("hierfedlora", *(method for method in METHODS if method != "hierfedlora"))
"""``--method`` values: ``validation.baselines.METHODS``, HierFedLoRA first (``validation.baseline_settings``
imports no solver, so ``--help`` stays light)."""

log = logging.getLogger(__name__)

# flag dest -> PlanningProblem field (top level) or "solver.<field>"
FLAG_FIELDS = {
    "num_groups": "num_groups",
    "min_group_size": "min_group_size",
    "max_group_size": "max_group_size",
    "max_speed_ratio": "max_speed_ratio",
    "depth_choices": "depth_choices",
    "intra_rounds_choices": "intra_rounds_choices",
    "local_steps": "local_steps",
    "batch_size": "batch_size",
    "round_budget_s": "round_budget_s",
    "traffic_budget_bytes": "traffic_budget_bytes",
    "min_group_samples": "min_group_samples",
    "max_group_samples": "max_group_samples",
    "backhaul_mbps": "backhaul_mbps",
    "server_ingress_mbps": "server_ingress_mbps",
    "intra_latency_s": "intra_latency_s",
    "global_latency_s": "global_latency_s",
    "speed_spread_weight": "speed_spread_weight",
    "aggregation": "aggregation",
    "target_loss_gap": "convergence.target_loss_gap",
    "solver_time_limit_s": "solver.time_limit_s",
    "solver_seed": "solver.seed",
    "solver_threads": "solver.threads",
    "solver_grouping_method": "solver.grouping_method",
}


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``plan`` subcommand."""
    parser = commands.add_parser(
        "plan",
        help="group devices near-IID and choose each group's depth and intra-group rounds",
        description="Solve the grouping (constrained clustering) and the depth/intra-rounds MILP for a fleet and "
        "a cost model; print a summary and write the Plan JSON. Flags map 1:1 onto PlanningProblem fields and "
        "override the --problem file.",
    )
    parser.add_argument("fleet", type=Path, help="fleet JSON (from 'hierfedlora fleet')")
    parser.add_argument("--cost-model", required=True, type=Path, help="cost model JSON (from 'hierfedlora profile')")
    parser.add_argument("--problem", type=Path, default=None, help="JSON with other PlanningProblem fields")
    parser.add_argument("--groups", dest="num_groups", type=int, default=None, help="number of groups K")
    parser.add_argument("--min-group-size", type=int, default=None, help="devices per group, at least")
    parser.add_argument("--max-group-size", type=int, default=None, help="devices per group, at most")
    parser.add_argument("--max-speed-ratio", type=float, default=None, help="slowest/fastest compute scale in a group")
    parser.add_argument("--depths", dest="depth_choices", type=int_list, default=None, help="allowed depths: 1,2,6")
    parser.add_argument(
        "--intra-rounds", dest="intra_rounds_choices", type=int_list, default=None, help="allowed intra_rounds: 1,2,4,8"
    )
    parser.add_argument("--local-steps", type=int, default=None, help="local steps per intra-group round")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per local step")
    parser.add_argument("--round-budget-s", type=float, default=None, help="max simulated seconds per global round")
    parser.add_argument("--traffic-budget-bytes", type=float, default=None, help="max bytes moved per global round")
    parser.add_argument("--min-group-samples", type=int, default=None, help="training samples per group, at least")
    parser.add_argument("--max-group-samples", type=int, default=None, help="training samples per group, at most")
    parser.add_argument("--backhaul-mbps", type=float, default=None, help="group aggregator to server link (20)")
    parser.add_argument(
        "--server-ingress-mbps", type=float, default=None, help="the server link all aggregators share (unlimited)"
    )
    parser.add_argument("--intra-latency-s", type=float, default=None, help="latency of a group aggregation (0.05)")
    parser.add_argument("--global-latency-s", type=float, default=None, help="latency of a global aggregation (1)")
    parser.add_argument("--speed-spread-weight", type=float, default=None, help="grouping weight on speed spread")
    parser.add_argument(
        "--aggregation",
        default=None,
        help="the aggregation rule the plan will run under, priced into every exchange: fedavg (default), ffa, "
        "fedex, flora, lora-fair, hetlora ('hierfedlora run' then uses it)",
    )
    parser.add_argument(
        "--target-loss-gap", type=float, default=None, help="target: eval loss gap left, a fraction (0.1)"
    )
    add_problem_settings(parser, example="solver.seed=3")
    parser.add_argument("--solver.time-limit-s", dest="solver_time_limit_s", type=float, default=None)
    parser.add_argument("--solver.seed", dest="solver_seed", type=int, default=None)
    parser.add_argument("--solver.threads", dest="solver_threads", type=int, default=None)
    parser.add_argument(
        "--solver.grouping-method",
        dest="solver_grouping_method",
        choices=("auto", "cpsat", "flow", "random"),
        default=None,
    )
    parser.add_argument(
        "--method",
        default="hierfedlora",
        choices=METHOD_CHOICES,
        help="whose plan: hierfedlora (default) or a baseline of validation.baselines, priced by the same model",
    )
    parser.add_argument(
        "--tau", type=int, default=None, help="a baseline's uniform intra-group rounds (hierfavg, grouping_only; 4)"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the plan JSON")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of the summary")
    parser.set_defaults(handler=handle)


def build_problem(fleet_path: Path, cost_model_path: Path, options: dict[str, Any]) -> Any:
    """A PlanningProblem from a fleet file, a cost model file and option overrides."""
    from hierfedlora.planner.fleet import load_fleet
    from hierfedlora.planner.io import from_dict, read_json, to_dict
    from hierfedlora.planner.types import CostModel, PlanningProblem

    fleet = load_fleet(fleet_path)
    cost_model = read_json(CostModel, cost_model_path)
    data = dict(options)
    data["devices"] = [to_dict(device) for device in fleet.devices]
    data["cost_model"] = to_dict(cost_model)
    return from_dict(PlanningProblem, data, source="problem")


def handle(args: argparse.Namespace) -> int:
    """Run ``plan``: build the problem, solve, print, write."""
    from hierfedlora.planner.io import to_json, write_json
    from hierfedlora.planner.plan import make_plan, summarize_plan

    base: dict[str, Any] = read_json_object(args.problem) if args.problem else {}
    flags = [(field, getattr(args, dest)) for dest, field in FLAG_FIELDS.items() if getattr(args, dest) is not None]
    options = problem_options(base, args.convergence, [*flags, *args.settings])
    problem = build_problem(args.fleet, args.cost_model, options)
    if args.method == "hierfedlora" and args.tau is None:
        plan = make_plan(problem)
    else:
        from hierfedlora.planner.errors import InvalidInputError, Issue
        from hierfedlora.validation.baselines import BaselineSettings, make_method_plan

        if args.tau is not None and not args.tau >= 1:
            raise InvalidInputError([Issue("--tau", "an integer >= 1", args.tau)], "command line")
        settings = BaselineSettings() if args.tau is None else BaselineSettings(uniform_intra_rounds=args.tau)
        plan = make_method_plan(args.method, problem, settings=settings)
    if args.out is not None:
        write_json(args.out, plan)
        log.info("wrote %s (plan %s)", args.out, plan.plan_id)
    sys.stdout.write((to_json(plan) if args.json else summarize_plan(plan)) + "\n")
    return 0
