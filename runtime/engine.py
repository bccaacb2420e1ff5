"""``run_plan``: execute a Plan with real LoRA fine-tuning on simulated devices; stream RoundReports.

One global round ``r`` (1-based, like Flower's ``server_round``):

1. every group k starts from the global state restricted to its top ``d_k`` layers (+ head), or to
   its ``layers`` when the group lists them (FedRA); a group with a ``lora_rank`` gets the state
   truncated to that rank (``models.adapters.truncate_rank``, HetLoRA), and its zeros stay zero;
2. ``intra_rounds`` times: each device trains ``local_steps`` AdamW steps from the group state
   (``local_training.train_device``), then the group takes the sample-weighted FedAvg;
   with ``RunOptions.evaluate_intra_rounds``, after each level but the last an observer evaluates
   the merge of the groups' current states (``runtime.intra_evaluation``; not charged to the clock,
   no effect on training), recorded in the report's ``intra_evals``;
3. the server merges the groups layer by layer with the run's rule (``RunOptions.aggregation``,
   ``runtime.aggregation_rules``; default ``aggregation.merge_across_groups``'s FedAvg); a rule that
   changes the base weights (FedEx-LoRA, FLoRA) adds its delta to the run's base delta, which devices
   and evaluation apply to the one shared model (``models.base_delta``) and every checkpoint saves
   (``base.<module>``); under ``hetlora`` each group then prunes its rank (``runtime.rank_pruning``),
   run state checkpointed as ``rank.<group_id>``;
4. the merged global model and each group's model are evaluated on a fixed, seeded subset of the
   fleet's held-out test split (the global model at the deepest group's depth, or with LoRA on every
   layer when a group lists ``layers``: FedRA's server model holds them all); a plan of one group on
   its top layers (FedLoRA) evaluates once, its group model being the global model;
5. the simulated clock advances by the cost model's round time (``clock.global_round_time_s``);
6. round r is committed (checkpoint, then a fsynced JSONL line) and only then yielded.

Ctrl-C (SIGINT) during a round lets the round finish and commit (``runtime.interrupts``), then raises
``RunInterruptedError``; ``resume=True`` continues from the last committed round, refusing a
checkpoint of another plan, fleet or model (``ResumeMismatchError``).

Where the loop starts (fresh, or from the last commit) and what a checkpoint's tensors hold is
``runtime.run_start``; consulting a replanner and the run's ``plans/`` folder is ``runtime.replanning``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from hierfedlora.models.adapters import AdapterState
from hierfedlora.models.base_delta import add_deltas, applied_base_delta, dense_bytes_per_layer
from hierfedlora.planner.errors import InvalidInputError, Issue, RunInterruptedError
from hierfedlora.planner.intra_evals import IntraRoundEval
from hierfedlora.planner.outcomes import GroupRoundResult, Plan, RoundReport
from hierfedlora.planner.types import CostModel, DeviceProfile, Fleet
from hierfedlora.runtime.aggregation_rules import get_rule
from hierfedlora.runtime.batched_training import device_batching
from hierfedlora.runtime.checkpoint import (
    REPORTS_NAME,
    ReportLog,
    RunState,
    numpy_rng_state,
    read_reports,
    save_checkpoint,
)
from hierfedlora.runtime.clock import RoundTiming, global_round_time_s
from hierfedlora.runtime.context import RunContext, check_plan_for_run, prepare_run
from hierfedlora.runtime.executors.base import Executor
from hierfedlora.runtime.executors.inprocess import InProcessExecutor
from hierfedlora.runtime.faults import FaultOptions, RoundFaults, draw_round_faults
from hierfedlora.runtime.forward import Forward
from hierfedlora.runtime.group_training import train_groups
from hierfedlora.runtime.interrupts import _sigint_deferred
from hierfedlora.runtime.intra_evaluation import _intra_observer
from hierfedlora.runtime.local_training import evaluate
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.rank_pruning import prune_ranks, ranked_plan
from hierfedlora.runtime.replanning import PLANS_FOLDER, Replanner, consult_replanner, save_plan
from hierfedlora.runtime.run_start import checkpoint_tensors, run_settings, start_run

__all__ = [
    "PLANS_FOLDER",
    "Replanner",
    "RunContext",
    "check_plan_for_run",
    "device_sample_counts",
    "prepare_run",
    "run_plan",
]

log = logging.getLogger(__name__)


def run_plan(
    plan: Plan,
    fleet: Fleet,
    cost_model: CostModel,
    options: RunOptions,
    run_dir: str | Path,
    *,
    resume: bool = False,
    context: RunContext | None = None,
    replanner: Replanner | None = None,
    clock_devices: Sequence[DeviceProfile] | None = None,
    executor: Executor | None = None,
    faults: FaultOptions | None = None,
    stop_past_s: float | None = None,
) -> Iterator[RoundReport]:
    """Execute ``plan`` for ``options.rounds`` global rounds, yielding each committed report.

    Parameters
    ----------
    plan, fleet, cost_model : the plan, the fleet it was made for, and the costs of its clock.
    options : RunOptions
    run_dir : path
        Where ``checkpoint.json``, tensors, ``reports.jsonl``, ``plan.json`` (the plan in force)
        and ``plans/`` (every plan the run used, by id) go.
    resume : bool
        Continue from ``run_dir``'s last committed round (a fresh start if it has none).
    context : RunContext, optional
        A prepared context to reuse (tests and experiments share one model across runs). Under a
        rule that changes the base (FedEx-LoRA, FLoRA) its frozen-prefix cache is not used
        (``RunContext.for_rule``): its states would be stale once the frozen layers change.
    replanner : Replanner, optional
        The closed loop: after each committed round it may return a new plan (same devices or
        a subset), which runs from the next round on. Adapters carry over: every group starts
        from the global state, so a group that gets deeper starts its new layers from the
        global values.
    clock_devices : sequence of DeviceProfile, optional
        The devices as they really are, for the simulated clock (default: ``fleet.devices``).
        Differing from the fleet's profiles, they model devices slower or faster than profiled,
        which the closed loop can measure and correct.
    executor : Executor, optional
        Who trains the devices (``runtime.executors``): default an in-process executor over
        ``context``. The caller owns an executor it passes in (``run_plan`` does not close it).
        With one, ``context`` needs only the evaluation rows (``prepare_run(..., device_ids=())``).
    faults : FaultOptions, optional
        Dropout, stragglers with a deadline, and poisoned updates (``runtime.faults``), drawn per
        round from ``options.seed``; screening of updates is on whenever faults are given.
        Reports name the devices that sent nothing (``dropped_device_ids``) and those whose
        update was rejected (``rejected_device_ids``).
    stop_past_s : float, optional
        A simulated-time budget: the run ends, untrained, before the first round whose simulated end
        would pass it (its time is known before it trains: the clock prices a round first). The first
        round of a run always trains. A caller whose metrics read only rounds ending within a budget
        (the experiments, the demo) passes it, so no round is trained that no figure reads.

    Raises
    ------
    InvalidInputError
        As :func:`prepare_run`; a new run into a folder that already holds a run; a re-plan
        naming devices outside the fleet; ``options.aggregation`` other than the rule a plan not
        priced under FedAvg was priced under (``Plan.aggregation``).
    ResumeMismatchError
        Resuming a checkpoint of another plan, fleet or model.
    RunInterruptedError
        After Ctrl-C, once the current round is committed.
    """
    _check_plan_rule(plan, options.aggregation)
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if context is None:
        context = prepare_run(plan, fleet, options, device_ids=None if executor is None else ())
    context = context.for_rule(options.aggregation)  # a shared context's prefix cache goes stale under base deltas
    owned = executor is None
    executor = executor or InProcessExecutor(context, device_batching(options, cost_model))
    try:
        yield from _run_rounds(
            plan,
            fleet,
            cost_model,
            options,
            folder,
            resume,
            context,
            replanner,
            clock_devices,
            executor,
            faults,
            stop_past_s,
        )
    finally:
        if owned:
            executor.close()


def _check_plan_rule(plan: Plan, aggregation: str) -> None:
    """Refuse a plan priced under another rule than the run's: its times and traffic would not be the clock's.

    A plan priced under FedAvg (every plan written before plans recorded a rule) runs under any rule.
    """
    if plan.aggregation not in ("fedavg", aggregation):
        expected = f"the rule the plan was priced under, {plan.aggregation!r} (a FedAvg-priced plan runs under any)"
        hint = f"re-plan under {aggregation!r} ('hierfedlora plan --aggregation {aggregation}')"
        raise InvalidInputError([Issue("aggregation", expected, aggregation, hint)])


def _run_rounds(
    plan: Plan,
    fleet: Fleet,
    cost_model: CostModel,
    options: RunOptions,
    folder: Path,
    resume: bool,
    context: RunContext,
    replanner: Replanner | None,
    clock_devices: Sequence[DeviceProfile] | None,
    executor: Executor,
    faults: FaultOptions | None,
    stop_past_s: float | None = None,
) -> Iterator[RoundReport]:
    samples_of = device_sample_counts(fleet)
    fleet_ids = tuple(device.device_id for device in fleet.devices)  # faults drawn per fleet device: every plan alike
    devices_by_id = {device.device_id: device for device in (clock_devices or fleet.devices)}
    positions = {device.device_id: idx for idx, device in enumerate(fleet.devices)}
    plans = {plan.plan_id: plan}
    rule = get_rule(options.aggregation)
    dense_bytes = dense_bytes_per_layer(context.model.peft_model) if rule.name == "fedex" else None
    begun = start_run(folder, plan, context, options, resume, plans, faults)
    settings = run_settings(options, faults)  # recorded in every checkpoint; a resume under others is refused
    state, global_state, base_delta, ranks = begun.state, begun.global_state, begun.base_delta, begun.ranks
    clock, rng, plan = begun.clock, begun.rng, begun.plan
    prunes = rule.name == "hetlora"  # HetLoRA's rank self-pruning: per-group ranks are run state
    ranks_of = plan.plan_id
    save_plan(folder, plan)
    with ReportLog.open(folder / REPORTS_NAME, resume_state=state) as report_log, _sigint_deferred() as stop:
        reports = read_reports(folder / REPORTS_NAME) if state else []  # repaired to rounds 1..c by open
        if state and replanner is not None:  # the decision after the last commit may not have been acted on
            plan = consult_replanner(replanner, plan, reports, plans, fleet, context, folder, samples_of)
        for global_round in range(state.global_round + 1 if state else 1, options.rounds + 1):
            started = time.perf_counter()
            if plan.plan_id != ranks_of:  # a re-plan starts from its own ranks
                ranks, ranks_of = {}, plan.plan_id
            run = ranked_plan(plan, ranks)  # the plan with each group's pruned rank (itself without pruning)
            round_faults = (
                draw_round_faults(faults, fleet_ids, seed=options.seed, global_round=global_round)
                if faults is not None
                else None
            )
            # The clock first: the deadline (K4) decides who is aggregated. Nothing else draws from rng.
            timing = global_round_time_s(
                run,
                cost_model,
                devices_by_id,
                backhaul_mbps=options.backhaul_mbps,
                server_ingress_mbps=options.server_ingress_mbps,
                intra_latency_s=options.intra_latency_s,
                global_latency_s=options.global_latency_s,
                noise=options.clock_noise,
                rng=rng,
                offline=round_faults.offline if round_faults else frozenset(),
                slowdown=round_faults.slowdown if round_faults else None,
                deadline_quantile=faults.deadline_quantile if faults else None,
                aggregation=rule.name,
                dense_bytes_per_layer=dense_bytes,
            )
            if stop_past_s is not None and reports and clock.advance(timing.round_s).now_s > stop_past_s:
                return  # it would end past the budget: nothing reads it, so it is not trained (nor committed)
            eval_depth = max(group.depth for group in plan.groups)
            if any(group.layers is not None for group in plan.groups):
                eval_depth = context.model.max_depth
            intra_evals: list[IntraRoundEval] = []
            observer = (
                _intra_observer(
                    intra_evals, context, rule, global_state, base_delta, plan, fleet, positions, timing, clock,
                    eval_depth, options.eval_batch_size,
                )
                if options.evaluate_intra_rounds
                else None
            )  # fmt: skip
            outcome = train_groups(
                executor,
                context,
                run,
                global_state,
                options,
                global_round,
                samples_of,
                faults=faults,
                round_faults=round_faults,
                missed=[t.missed for t in timing.groups] if round_faults else (),
                rule=rule,
                base_delta=base_delta,
                after_level=observer,
            )
            results, kept_states, kept_deltas, weights = [], [], [], []
            same_as_global = _group_model_is_global(plan)
            for group, group_state, group_delta, loss, took_part in zip(
                plan.groups, outcome.states, outcome.deltas, outcome.losses, outcome.contributed, strict=True
            ):
                accuracy = None
                if took_part:
                    kept_states.append(group_state)
                    kept_deltas.append(group_delta)
                    weights.append(float(sum(fleet.devices[positions[d]].num_samples for d in group.device_ids)))
                    if options.evaluate_groups and not same_as_global:
                        with applied_base_delta(context.model.peft_model, add_deltas(base_delta, group_delta)):
                            _, accuracy = evaluate(
                                _load(context, group.depth, group_state, group.layers),
                                context.data.labels,
                                context.eval_rows,
                                batch_size=options.eval_batch_size,
                            )
                results.append((loss, accuracy))
            if kept_states:
                merged = rule.aggregate(global_state, kept_states, weights, kept_deltas)
                global_state, base_delta = merged.state, add_deltas(base_delta, merged.base_delta)
            if prunes:
                full_rank = context.model.spec.lora_rank
                ranks = prune_ranks(
                    run, outcome.states, outcome.contributed, ranks, full_rank, gamma=options.hetlora_prune_gamma
                )
            with applied_base_delta(context.model.peft_model, base_delta):
                eval_loss, eval_accuracy = evaluate(
                    _load(context, eval_depth, global_state),
                    context.data.labels,
                    context.eval_rows,
                    batch_size=options.eval_batch_size,
                )
            if options.evaluate_groups and same_as_global and outcome.contributed[0]:
                results = [(results[0][0], eval_accuracy)]  # the one group's model is the global model
            _refuse_divergence([loss for loss, _ in results] + [eval_loss], options, global_round)
            clock = clock.advance(timing.round_s)
            report = RoundReport(
                plan_id=plan.plan_id,
                global_round=global_round,
                sim_time_s=clock.now_s,
                wall_time_s=time.perf_counter() - started,
                groups=tuple(
                    GroupRoundResult(
                        group_id=g.group_id,
                        loss=loss,
                        accuracy=acc,
                        upload_bytes=t.upload_bytes,
                        download_bytes=t.download_bytes,
                        sim_time_s=t.group_s,
                    )
                    for g, (loss, acc), t in zip(plan.groups, results, timing.groups, strict=True)
                ),
                measured_step_s=outcome.step_s,
                device_step_s=timing.device_step_s,
                dropped_device_ids=_dropped(round_faults, timing),
                rejected_device_ids=tuple(sorted(outcome.rejected)),
                eval_loss=eval_loss,
                eval_accuracy=eval_accuracy,
                seed=options.seed,
                aggregation=rule.name,
                intra_evals=tuple(intra_evals),
            )
            run_state = RunState(
                plan_id=plan.plan_id,
                fleet_sha256=context.fleet_sha256,
                model_sha256=context.model_sha256,
                global_round=global_round,
                sim_time_s=clock.now_s,
                seed=options.seed,
                numpy_rng_state=numpy_rng_state(rng),
                last_report=report,
                aggregation=rule.name,
                reports_sha256=report_log.sha256,  # rounds 1..k-1: resume notices a line changed since
                settings=settings,
            )
            save_checkpoint(folder, run_state, checkpoint_tensors(global_state, base_delta, ranks))
            report_log.append(report)
            reports.append(report)
            yield report
            if stop.is_set() and global_round < options.rounds:
                raise RunInterruptedError(global_round, str(folder))
            if replanner is not None and global_round < options.rounds:
                plan = consult_replanner(replanner, plan, reports, plans, fleet, context, folder, samples_of)


def _dropped(round_faults: RoundFaults | None, timing: RoundTiming) -> tuple[str, ...]:
    """Devices that sent nothing this round: offline (F1) or late for some deadline (F3)."""
    if round_faults is None:
        return ()
    late = {d for g in timing.groups for level in g.missed for d in level}
    return tuple(sorted(set(round_faults.offline) | late))


def _group_model_is_global(plan: Plan) -> bool:
    """Whether the group's evaluation would repeat the global one: one group on the top ``d`` layers.

    Its merge weight is exactly 1, so the merged global state holds the group's tensors bit for bit
    on the group's keys, and the global model is evaluated at the group's depth (4): the same model.
    """
    return len(plan.groups) == 1 and plan.groups[0].layers is None


def device_sample_counts(fleet: Fleet) -> dict[str, int]:
    """Training samples per device id: the lengths of the fleet's sample indices (else its counts)."""
    if fleet.sample_indices:
        return {d.device_id: len(rows) for d, rows in zip(fleet.devices, fleet.sample_indices, strict=True)}
    return {d.device_id: d.num_samples for d in fleet.devices}


def _load(context: RunContext, depth: int, state: AdapterState, layers: Sequence[int] | None = None) -> Forward:
    forward = context.forward_for(depth, layers)
    context.model.set_adapter_state({key: state[key] for key in context.model.adapter_keys()})
    return forward


def _refuse_divergence(losses: list[float | None], options: RunOptions, global_round: int) -> None:
    """A NaN or infinite loss would fail the report's own check, naming a field the user never set."""
    bad = [loss for loss in losses if loss is not None and not math.isfinite(loss)]
    if bad:
        expected = "a learning rate (with lora_alpha) at which training stays finite"
        hint = f"the loss became {bad[0]} in global round {global_round}; lower it"
        raise InvalidInputError([Issue("learning_rate", expected, options.learning_rate, hint)])
