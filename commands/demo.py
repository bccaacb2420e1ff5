"""``hierfedlora demo``: the main job on embedded defaults, offline, in a few minutes.

profile (the packaged all-MiniLM-L6-v2 on this host) -> fleet (WordNet noun glosses,
Dirichlet non-IID over devices of three capability tiers) -> plan (near-IID groups, depth and
intra-group rounds per group) -> run (real LoRA fine-tuning on simulated devices) -> report.
Every artefact lands in ``--out``; a stage whose output already exists is reused, so an
interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``demo`` subcommand."""
    parser = commands.add_parser(
        "demo",
        help="run profile -> fleet -> plan -> run on the embedded defaults (offline, a few minutes)",
        description="The main job: measure the packaged model, build a non-IID WordNet fleet, plan it and run it; "
        "artefacts go to --out. Existing artefacts in --out are reused.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--devices", type=int, default=12, help="simulated devices (default 12)")
    parser.add_argument("--groups", type=int, default=3, help="groups (default 3)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet non-IID level (default 0.5)")
    parser.add_argument("--samples-per-device", type=int, default=120, help="training samples per device")
    parser.add_argument("--rounds", type=int, default=10, help="global rounds to run (default 10)")
    parser.add_argument("--learning-rate", type=float, default=5e-3, help="AdamW learning rate (default 5e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run the demo pipeline, stage by stage, reusing finished stages."""
    from hierfedlora.commands.fleet import load_data
    from hierfedlora.commands.run import execute
    from hierfedlora.models.catalog import ModelSpec
    from hierfedlora.models.profiling import measure_cost_model
    from hierfedlora.planner.fleet import load_fleet, make_fleet, save_fleet
    from hierfedlora.planner.io import read_json, write_json
    from hierfedlora.planner.plan import make_plan, summarize_plan
    from hierfedlora.planner.types import CostModel, PlanningProblem, SolverOptions
    from hierfedlora.runtime.options import RunOptions

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cost_path, fleet_path, plan_path = out / "cost_model.json", out / "fleet.json", out / "plan.json"

    if cost_path.exists():
        cost_model = read_json(CostModel, cost_path)
    else:
        log.info("[1/4] profiling the packaged model on this host ...")
        cost_model = measure_cost_model(
            ModelSpec(path="default", num_labels=26), batch_size=16, seq_len=64, seed=args.seed
        )
        write_json(cost_path, cost_model)
    if fleet_path.exists():
        fleet = load_fleet(fleet_path)
    else:
        log.info("[2/4] building a %d-device non-IID WordNet fleet ...", args.devices)
        fleet = make_fleet(
            load_data("wordnet", "text", "label"),
            num_devices=args.devices,
            partition="dirichlet",
            alpha=args.alpha,
            tier_mix="paper",
            max_samples_per_device=args.samples_per_device,
            seed=args.seed,
        )
        save_fleet(fleet_path, fleet)
    log.info("[3/4] planning %d groups ...", args.groups)
    problem = PlanningProblem(
        devices=fleet.devices,
        cost_model=cost_model,
        num_groups=args.groups,
        solver=SolverOptions(seed=args.seed, time_limit_s=5.0),
    )
    plan = make_plan(problem)
    write_json(plan_path, plan)
    sys.stdout.write(summarize_plan(plan) + "\n")
    log.info("[4/4] running %d global rounds of real LoRA fine-tuning ...", args.rounds)
    run_dir = out / "run"
    options = RunOptions(rounds=args.rounds, learning_rate=args.learning_rate, eval_samples=256, seed=args.seed)
    resume = (run_dir / "checkpoint.json").exists() and _same_plan(run_dir, plan)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a run of an older plan: the demo owns this folder
    reports = execute(plan, fleet, cost_model, options, run_dir, resume=resume)
    first, last = reports[0], reports[-1]
    sys.stdout.write(
        f"test accuracy {first.eval_accuracy:.1%} after round 1 -> {last.eval_accuracy:.1%} after round "
        f"{last.global_round} ({last.sim_time_s:.0f} s simulated; chance {1 / len(fleet.class_names):.1%})\n"
        f"artefacts in {out}: {cost_path.name}, {fleet_path.name}, {plan_path.name}, run/reports.jsonl, "
        f"run/accuracy_vs_time.png\n"
    )
    return 0


def _same_plan(run_dir: Path, plan: object) -> bool:
    from hierfedlora.planner.errors import InvalidInputError
    from hierfedlora.planner.io import read_json
    from hierfedlora.planner.outcomes import Plan

    try:
        return read_json(Plan, run_dir / "plan.json").plan_id == getattr(plan, "plan_id", None)
    except InvalidInputError:
        return False
