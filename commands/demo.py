"""``hierfedlora demo``: the main job on embedded defaults, offline, in a few minutes.

profile (the packaged all-MiniLM-L6-v2 on this host) -> fleet (WordNet noun glosses,
Dirichlet non-IID over devices of three capability tiers) -> plan (HierFedLoRA: near-IID groups,
depth and intra-group rounds per group, with the shipped calibrated convergence constants; and
FedLoRA, flat FedAvg at full depth, on the same fleet) -> run both (real LoRA fine-tuning on
simulated devices, the same clock, until the same simulated-time budget) -> one figure with both
accuracy curves. Every artefact lands in ``--out``; a stage whose output already exists is reused,
so an interrupted demo picks up where it stopped.

The budget is ``--budget-fedlora-rounds`` times FedLoRA's predicted round time (a formula of the
cost model and the fleet, known before training), as in the experiments; each method runs its
rounds that end within the budget (a round that would end past it is not trained: the clock prices
a round before it trains), and its accuracy at the budget is that of its last round.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

log = logging.getLogger(__name__)

METHODS = ("hierfedlora", "fedlora")
FIGURE = "accuracy_vs_time.png"
PLAN_FILES = {"hierfedlora": "plan.json", "fedlora": "plan_fedlora.json"}
RUN_DIRS = {"hierfedlora": "run", "fedlora": "fedlora"}


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``demo`` subcommand."""
    parser = commands.add_parser(
        "demo",
        help="profile -> fleet -> plan -> run HierFedLoRA and FedLoRA on the embedded defaults (offline, minutes)",
        description="The main job: measure the packaged model, build a non-IID WordNet fleet, plan it with "
        "HierFedLoRA (calibrated convergence constants) and with FedLoRA, run both on the same simulated clock "
        "until the same budget, and plot both curves in one figure; artefacts go to --out. Existing artefacts "
        "in --out are reused.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--devices", type=int, default=12, help="simulated devices (default 12)")
    parser.add_argument("--groups", type=int, default=3, help="groups (default 3)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet non-IID level (default 0.5)")
    parser.add_argument("--samples-per-device", type=int, default=120, help="training samples per device")
    parser.add_argument(
        "--budget-fedlora-rounds",
        type=float,
        default=8.0,
        help="simulated-time budget of both runs, in FedLoRA's predicted round times (default 8)",
    )
    parser.add_argument("--max-rounds", type=int, default=40, help="global rounds of either run, at most (40)")
    parser.add_argument("--learning-rate", type=float, default=5e-3, help="AdamW learning rate (default 5e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run the demo pipeline, stage by stage, reusing finished stages."""
    from hierfedlora.commands.fleet import load_data
    from hierfedlora.models.catalog import ModelSpec
    from hierfedlora.models.profiling import measure_cost_model
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.planner.fleet import load_fleet, make_fleet, save_fleet
    from hierfedlora.planner.io import read_json, write_json
    from hierfedlora.planner.plan import summarize_plan
    from hierfedlora.planner.types import CostModel, PlanningProblem, SolverOptions
    from hierfedlora.runtime.options import RunOptions
    from hierfedlora.validation.baselines import make_method_plan
    from hierfedlora.validation.plots import plot_curves

    issues = []
    if not args.budget_fedlora_rounds > 0:
        issues.append(Issue("--budget-fedlora-rounds", "a number > 0", args.budget_fedlora_rounds))
    if args.max_rounds < 1:
        issues.append(Issue("--max-rounds", "an integer >= 1", args.max_rounds))
    if issues:
        raise InvalidInputError(issues, "command line")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cost_path, fleet_path = out / "cost_model.json", out / "fleet.json"
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
    log.info("[3/4] planning %d groups (HierFedLoRA) and one flat group (FedLoRA) ...", args.groups)
    problem = PlanningProblem(  # the convergence constants are the library's calibrated defaults
        devices=fleet.devices,
        cost_model=cost_model,
        num_groups=args.groups,
        solver=SolverOptions(seed=args.seed),
    )
    plans = {method: make_method_plan(method, problem) for method in METHODS}
    for method, plan in plans.items():
        write_json(out / PLAN_FILES[method], plan)
    budget_s = args.budget_fedlora_rounds * plans["fedlora"].predicted_round_time_s
    sys.stdout.write(summarize_plan(plans["hierfedlora"]) + "\n")
    sys.stdout.write(f"hierarchy used: {_uses_hierarchy(plans['hierfedlora'], cost_model.num_layers)}\n")
    options = RunOptions(rounds=args.max_rounds, learning_rate=args.learning_rate, eval_samples=256, seed=args.seed)
    log.info("[4/4] running both until %.0f s simulated (%g FedLoRA rounds) ...", budget_s, args.budget_fedlora_rounds)
    reports = _run_both(plans, fleet, cost_model, options, out, budget_s)
    curves = {_label(m, plans[m]): [([r.sim_time_s for r in rs], [r.eval_accuracy for r in rs])] for m, rs in
              reports.items()}  # fmt: skip
    chance = 1 / len(fleet.class_names)
    title = f"demo: {len(fleet.devices)} devices, alpha = {args.alpha:g}, same clock and budget"
    plot_curves(curves, out / FIGURE, title=title, budget_s=budget_s, chance=chance)
    lines = []
    for method, runs in reports.items():
        within = [r for r in runs if r.sim_time_s <= budget_s] or runs[:1]
        last = within[-1]
        lines.append(
            f"{method:<11} {last.eval_accuracy:6.1%} test accuracy at the budget ({last.global_round} rounds "
            f"within {budget_s:.0f} s simulated; round 1: {runs[0].eval_accuracy:.1%})"
        )
    sys.stdout.write(
        "\n".join(lines) + f"\nchance {chance:.1%}; artefacts in {out}: {cost_path.name}, {fleet_path.name}, "
        f"plan.json (HierFedLoRA), plan_fedlora.json, run/ and fedlora/ (reports.jsonl), {FIGURE}\n"
    )
    return 0


def _uses_hierarchy(plan: Any, num_layers: int) -> str:
    deep = [g for g in plan.groups if g.intra_rounds > 1 or g.depth < num_layers]
    if not deep:
        return "no (every group trains every layer with one intra-group round: the model says flat pays)"
    return "yes (" + ", ".join(f"group {g.group_id}: depth {g.depth}, tau {g.intra_rounds}" for g in deep) + ")"


def _label(method: str, plan: Any) -> str:
    depths = sorted({g.depth for g in plan.groups})
    taus = sorted({g.intra_rounds for g in plan.groups})
    return f"{'HierFedLoRA' if method == 'hierfedlora' else 'FedLoRA'} (depth {depths}, tau {taus})"


def _run_both(
    plans: dict[str, Any], fleet: Any, cost_model: Any, options: Any, out: Path, budget_s: float
) -> dict[str, list[Any]]:
    """Each plan on the same fleet and clock, one shared model context, until ``budget_s`` is passed."""
    from tqdm import tqdm

    from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
    from hierfedlora.runtime.context import prepare_run
    from hierfedlora.runtime.engine import run_plan

    context = None
    reports: dict[str, list[Any]] = {}
    for method, plan in plans.items():
        run_dir = out / RUN_DIRS[method]
        resume = (run_dir / "checkpoint.json").exists() and _same_plan(run_dir, plan)
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # a run of an older plan: the demo owns this folder
        done = read_reports(run_dir / REPORTS_NAME) if resume else []
        if done and (done[-1].sim_time_s >= budget_s or len(done) >= options.rounds):
            reports[method] = done
            continue
        context = context or prepare_run(plans["fedlora"], fleet, options)  # every device, every layer
        with tqdm(desc=method, unit="round", file=sys.stderr) as bar:
            rounds = run_plan(
                plan, fleet, cost_model, options, run_dir, resume=resume, context=context, stop_past_s=budget_s
            )
            for report in rounds:
                bar.n = report.global_round
                bar.set_postfix(sim=f"{report.sim_time_s:.0f}s", acc=f"{report.eval_accuracy:.1%}")
                bar.refresh()
                if report.sim_time_s >= budget_s:
                    break
        reports[method] = read_reports(run_dir / REPORTS_NAME)
    return reports


def _same_plan(run_dir: Path, plan: object) -> bool:
    from hierfedlora.planner.errors import InvalidInputError
    from hierfedlora.planner.io import read_json
    from hierfedlora.planner.outcomes import Plan

    try:
        return read_json(Plan, run_dir / "plan.json").plan_id == getattr(plan, "plan_id", None)
    except InvalidInputError:
        return False
