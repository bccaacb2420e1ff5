"""``hierfedlora run``: execute a plan with real LoRA fine-tuning on simulated devices."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from hierfedlora.commands.faults import add_fault_arguments, build_faults
from hierfedlora.commands.method_replan import build_method_replanner
from hierfedlora.commands.run_inputs import build_executor, build_replanner, check_plan_inputs, run_aggregation

__all__ = ["check_plan_inputs", "execute", "register", "run_aggregation"]

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` subcommand."""
    parser = commands.add_parser(
        "run",
        help="execute a plan: real LoRA fine-tuning on simulated devices, a report per global round",
        description="Run PLAN for --rounds global rounds on the fleet's devices; every round is checkpointed and "
        "appended to DIR/reports.jsonl before it is shown. Ctrl-C finishes the round, then stops; --resume "
        "continues. Writes DIR/accuracy_vs_time.png at the end. DIR is locked for the whole run: a second "
        "process writing there fails at once (exit 2). A FedGSP-like or FedRA-like plan ('hierfedlora plan --method "
        "fedgsp|fedra', round 1's plan) follows its method's schedule as 'hierfedlora experiment' does: FedGSP adds "
        "a group every round up to --problem's num_groups, FedRA re-draws the devices' layers every round.",
    )
    parser.add_argument("plan", type=Path, help="plan JSON (from 'hierfedlora plan')")
    parser.add_argument("--fleet", required=True, type=Path, help="the fleet JSON the plan was made for")
    parser.add_argument("--cost-model", required=True, type=Path, help="the cost model JSON of the plan")
    parser.add_argument("--rounds", required=True, type=int, help="global rounds to run")
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, reports.jsonl, plot)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last round")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    parser.add_argument("--model", default="default", help="'default' or a local HF model folder")
    parser.add_argument("--eval-samples", type=int, default=512, help="test samples evaluated per round")
    parser.add_argument("--no-prefix-cache", action="store_true", help="train without the frozen-prefix cache")
    parser.add_argument(
        "--prefix-cache-max-mib",
        type=int,
        default=None,
        metavar="MIB",
        help="bound on the frozen-prefix cache "
        "(default: RunOptions' prefix_cache_max_mib; rows beyond it are recomputed, same results, slower)",
    )
    parser.add_argument(
        "--max-seq-len", type=int, default=None, help="tokens per sample (default: the cost model's seq_len)"
    )
    parser.add_argument("--eval-batch-size", type=int, default=256, help="samples per evaluation batch")
    parser.add_argument(
        "--no-group-eval", action="store_true", help="evaluate only the global model each round, not every group's"
    )
    parser.add_argument("--lora-rank", type=int, default=None, help="LoRA rank r (default: the cost model's)")
    parser.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scaling alpha (default 16)")
    parser.add_argument(
        "--batched-devices",
        type=int,
        default=None,
        metavar="N",
        help="train up to N devices of a group as one batched computation, fewer where the activation memory "
        "budget says so (same math, other rounding; default: RunOptions' 64; 1: one after another, the "
        "sequential path the Ray and Flower executors run)",
    )
    parser.add_argument(
        "--batch-memory-mib",
        type=int,
        default=None,
        metavar="MIB",
        help="activation memory (cost model's estimate) a batched chunk of devices may keep; it caps --batched-devices "
        "(default: RunOptions' batch_memory_mib; a process holds about twice the estimate at a chunk's peak)",
    )
    parser.add_argument(
        "--no-token-packing",
        action="store_true",
        help="let the frozen linear layers of a batched step compute its padding tokens too (the same values; "
        "packing skips them, about a third of a WordNet step at seq 24)",
    )
    parser.add_argument(
        "--allow-cost-mismatch",
        action="store_true",
        help="run even if the sequence length, batch size or LoRA rank differ from the cost model's (the simulated "
        "clock then prices another computation than the one that runs)",
    )
    parser.add_argument("--clock-noise", type=float, default=0.0, help="lognormal sigma on simulated step times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--aggregation",
        default=None,
        help="aggregation rule inside and across groups: fedavg, ffa, fedex, flora, lora-fair, hetlora; default the "
        "rule the plan was priced under ('hierfedlora plan --aggregation'); another rule is refused (exit 2) unless "
        "the plan was priced under fedavg (as every plan written before plans recorded their rule)",
    )
    parser.add_argument(
        "--hetlora-prune-gamma",
        type=float,
        default=0.99,
        help="under --aggregation hetlora, a group drops its last LoRA rank component after a round when it carries "
        "under 1 - gamma of the norm (default 0.99; 0 prunes one every round)",
    )
    parser.add_argument(
        "--replan-every",
        type=int,
        default=None,
        metavar="R",
        help="close the loop: refit the convergence model and device speeds from the reports and re-plan every R "
        "rounds (planner/feedback.py); default: keep the plan",
    )
    parser.add_argument(
        "--self-calibrate",
        action="store_true",
        help="fit the convergence constants from this run (validation/selfcal.py): the plan's constants become a "
        "weak prior (--prior-weight), one probe round after round --probe-after changes --probe-groups groups' depth "
        "or tau (charged on the simulated clock), the run re-plans from the refit right after it (and every "
        "--replan-every rounds if given) and writes the fitted constants to OUT/convergence.json",
    )
    parser.add_argument(
        "--convergence",
        type=Path,
        default=None,
        help="with --replan-every or --self-calibrate: ConvergenceParams JSON, the refit's prior (default: the "
        "library's calibrated constants, or --problem's)",
    )
    parser.add_argument("--probe-after", type=int, default=2, help="with --self-calibrate: the probe follows round N")
    parser.add_argument("--probe-groups", type=int, default=2, help="with --self-calibrate: groups the probe changes")
    parser.add_argument(
        "--prior-weight", type=float, default=0.01, help="with --self-calibrate: weight of the prior in the refit"
    )
    parser.add_argument(
        "--problem",
        type=Path,
        default=None,
        help="with --replan-every or --self-calibrate, or a FedGSP or FedRA plan: JSON with the PlanningProblem "
        "fields the plan was made with (as for 'hierfedlora plan --problem'); num_groups, local_steps and "
        "batch_size default to the plan's, except that a FedGSP plan needs num_groups, the most groups it grows to",
    )
    parser.add_argument(
        "--executor",
        choices=("inprocess", "ray"),
        default="inprocess",
        help="who trains the devices: this process (default) or Ray actors (needs the 'ray' extra; same results)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="with --executor ray: a running cluster, e.g. HOST:6379 from 'ray start --head' (default: start a "
        "local Ray for this run and stop it at the end)",
    )
    parser.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        metavar="N",
        help="with --executor ray: actors (worker processes, one model each; default one per CPU of the cluster, "
        "at most one per device)",
    )
    add_fault_arguments(parser)
    parser.set_defaults(handler=handle)


def execute(
    plan: Any,
    fleet: Any,
    cost_model: Any,
    options: Any,
    out: Path,
    *,
    resume: bool,
    replanner: Any = None,
    executor: Any = None,
    faults: Any = None,
) -> list[Any]:
    """Run with a progress bar (with ``replanner``, ``executor``, ``faults`` if given); plot; return the reports."""
    from tqdm import tqdm

    from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
    from hierfedlora.runtime.engine import run_plan
    from hierfedlora.validation.plots import plot_accuracy_vs_time

    with tqdm(total=options.rounds, desc="global rounds", unit="round", file=sys.stderr) as bar:
        for report in run_plan(
            plan,
            fleet,
            cost_model,
            options,
            out,
            resume=resume,
            replanner=replanner,
            executor=executor,
            faults=faults,
        ):
            bar.n = report.global_round
            bar.set_postfix(sim=f"{report.sim_time_s:.0f}s", acc=f"{report.eval_accuracy:.1%}")
            bar.refresh()
    reports = read_reports(out / REPORTS_NAME)
    chance = 1.0 / len(fleet.class_names)
    plot_accuracy_vs_time({f"plan {plan.plan_id}": reports}, out / "accuracy_vs_time.png", chance=chance)
    return reports


def handle(args: argparse.Namespace) -> int:
    """Run ``run``: read and cross-check the inputs, check and lock ``--out``, then train."""
    from hierfedlora.planner.errors import InvalidInputError
    from hierfedlora.planner.fleet import load_fleet
    from hierfedlora.planner.io import read_json
    from hierfedlora.planner.outcomes import Plan
    from hierfedlora.planner.types import CostModel
    from hierfedlora.runtime.options import RunOptions, cost_mismatches
    from hierfedlora.runtime.run_folder import check_run_folder, lock_folder

    plan = read_json(Plan, args.plan)
    aggregation = run_aggregation(args.aggregation, plan, args.plan)
    fleet = load_fleet(args.fleet)
    cost_model = read_json(CostModel, args.cost_model)
    check_plan_inputs(
        plan, fleet, cost_model, args.fleet.name, args.cost_model.name, allow_cost_mismatch=args.allow_cost_mismatch
    )
    options = RunOptions(
        rounds=args.rounds,
        learning_rate=args.learning_rate,
        model=args.model,
        lora_rank=cost_model.lora_rank if args.lora_rank is None else args.lora_rank,
        lora_alpha=args.lora_alpha,
        max_seq_len=cost_model.seq_len if args.max_seq_len is None else args.max_seq_len,
        eval_samples=args.eval_samples,
        eval_batch_size=args.eval_batch_size,
        use_prefix_cache=not args.no_prefix_cache,
        evaluate_groups=not args.no_group_eval,
        **({} if args.batched_devices is None else {"batched_devices": args.batched_devices}),
        **({} if args.batch_memory_mib is None else {"batch_memory_mib": args.batch_memory_mib}),
        pack_tokens=not args.no_token_packing,
        **({} if args.prefix_cache_max_mib is None else {"prefix_cache_max_mib": args.prefix_cache_max_mib}),
        clock_noise=args.clock_noise,
        seed=args.seed,
        aggregation=aggregation,
        hetlora_prune_gamma=args.hetlora_prune_gamma,
    )
    mismatch = cost_mismatches(options, plan.batch_size, cost_model)
    if mismatch is not None and not args.allow_cost_mismatch:
        raise InvalidInputError([mismatch], "run")
    if mismatch is not None:
        log.warning("cost-model mismatch allowed: %s", mismatch)
    faults = build_faults(args)
    replanner = build_method_replanner(args, plan, aggregation)  # FedGSP's growing groups, FedRA's re-draws
    if replanner is None:
        replanner = build_replanner(args, plan, aggregation)
    check_run_folder(args.out, resume=args.resume)
    with lock_folder(args.out):
        check_run_folder(args.out, resume=args.resume)  # again: another process may have written it meanwhile
        executor = build_executor(args, plan, fleet, cost_model, options)
        try:
            reports = execute(
                plan,
                fleet,
                cost_model,
                options,
                args.out,
                resume=args.resume,
                replanner=replanner,
                executor=executor,
                faults=faults,
            )
        finally:
            if executor is not None:
                executor.close()
    last = reports[-1]
    sys.stdout.write(
        f"{len(reports)} global rounds, {last.sim_time_s:.0f} s simulated: test accuracy {last.eval_accuracy:.1%} "
        f"(chance {1 / len(fleet.class_names):.1%}); reports in {args.out / 'reports.jsonl'}, "
        f"plot in {args.out / 'accuracy_vs_time.png'}\n"
    )
    if args.self_calibrate:
        from hierfedlora.validation.selfcal import FITTED_NAME, write_fitted_constants

        fit = write_fitted_constants(args.out, replanner.replanner.problem, args.prior_weight)
        if fit is not None:
            params = fit.params
            sys.stdout.write(
                f"self-calibrated: beta {params.depth_exponent:.3g}, c {params.skew_sensitivity:.3g}, "
                f"R0 {params.reference_rounds:.3g} ({args.out / FITTED_NAME}; plan with it: hierfedlora plan "
                f"--convergence {args.out / FITTED_NAME})\n"
            )
    return 0
