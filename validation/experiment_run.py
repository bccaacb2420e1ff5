"""One run of an experiment: a method on one setting, planned, run (or resumed, or read back) until the
simulated-time budget, and its :class:`RunResult` with the metrics ``validation.experiments`` defines.

Nothing is lost: the initial plan and the result are sealed files in the run's folder, every round is
committed by the runtime, and the reports are read back from the repaired log.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.outcomes import Plan, RoundReport
from hierfedlora.planner.sealed import read_sealed_json, write_sealed_json
from hierfedlora.planner.types import DeviceProfile, Fleet, PlanningProblem
from hierfedlora.validation.baselines import make_method_plan, method_replanner, problem_under_rule
from hierfedlora.validation.experiment_presets import (
    LOOP_METHOD,
    SELFCAL_METHOD,
    ExperimentPreset,
    RunResult,
    Setting,
    split_method,
)
from hierfedlora.validation.loop_fork import LoopFork, discard_stale_copy, loop_twin, static_twin
from hierfedlora.validation.selfcal import FITTED_NAME, self_calibrating_replanner, write_fitted_constants

__all__ = ["RESULT_NAME"]

RESULT_NAME = "result.json"


def _metrics(
    reports: Sequence[RoundReport], budget_s: float, target: float | None
) -> tuple[float, float | None, int, int]:
    """(final accuracy, time to ``target``, traffic, re-plans) over the rounds ending within the budget
    (the first round where none does)."""
    within = [r for r in reports if r.sim_time_s <= budget_s] or list(reports[:1])
    reached = None if target is None else next((r.sim_time_s for r in within if r.eval_accuracy >= target), None)
    traffic = sum(r.upload_bytes + r.download_bytes for r in within)
    return within[-1].eval_accuracy, reached, traffic, len({r.plan_id for r in within}) - 1


def _run_one(
    preset: ExperimentPreset,
    method: str,
    setting: Setting,
    problem: PlanningProblem,
    fleet: Fleet,
    truth: tuple[DeviceProfile, ...],
    budget_s: float,
    folder: Path,
    context: object,
    resolved_rule: str | None = None,
) -> RunResult:
    """Run (or resume, or read back) ``method`` on ``setting``; ``resolved_rule`` is the rule a
    ``NAME@best`` method runs under here (``method_rules.resolve_best_rule``)."""
    from hierfedlora.runtime.options import RunOptions
    from hierfedlora.runtime.run_folder import lock_folder

    name, rule = split_method(method)  # "hierfedlora@fedex": HierFedLoRA's plan under FedEx-LoRA
    rule = resolved_rule or rule
    done = folder / RESULT_NAME
    if done.exists():  # older result files lack the fleet axes: the setting supplies them
        result = read_sealed_json(RunResult, done)  # a value changed since it was written is refused
        if result.resolved_rule != resolved_rule:  # stage 1's results changed under a finished stage-2 run
            expected = f"a result of {method} under {resolved_rule}, HierFedLoRA's best rule here"
            raise InvalidInputError([Issue("out", expected, f"one under {result.resolved_rule}: {done}")])
        return dataclasses.replace(result, num_devices=setting.num_devices, tier_mix=setting.tier_mix)
    problem = problem_under_rule(problem, rule, context)  # planned (and re-planned) for the rule it runs under
    plan_path = folder / "initial_plan.json"
    if plan_path.exists():
        plan = read_sealed_json(Plan, plan_path)
    else:
        planned_as = "hierfedlora" if name in (LOOP_METHOD, SELFCAL_METHOD) else name
        plan = make_method_plan(planned_as, problem, settings=preset.baseline)
        folder.mkdir(parents=True, exist_ok=True)
        write_sealed_json(plan_path, plan)
    options = RunOptions(
        rounds=preset.max_rounds,
        learning_rate=preset.learning_rate,
        optimizer=preset.optimizer,
        max_seq_len=preset.max_seq_len,
        eval_samples=preset.eval_samples,
        evaluate_groups=False,
        evaluate_intra_rounds=preset.evaluate_intra_rounds,
        backhaul_mbps=problem.backhaul_mbps,
        server_ingress_mbps=problem.server_ingress_mbps,
        intra_latency_s=problem.intra_latency_s,
        global_latency_s=problem.global_latency_s,
        seed=setting.seed,
        aggregation=rule,
    )
    replanner = _replanner(preset, name, problem, plan, setting.seed)
    run_dir = folder / "run"
    fork = _loop_fork(preset, method, problem, plan, setting.seed, folder, run_dir)
    if static_twin(method, preset.methods) is not None:
        discard_stale_copy(folder)  # its static run was killed while copying: this loop trains without it
    started = time.perf_counter()
    with lock_folder(run_dir):
        reports = _run_reports(
            plan, fleet, problem, options, run_dir, context, replanner, truth, budget_s, preset, fork
        )
    if method == SELFCAL_METHOD:  # the constants this run fitted, for `hierfedlora plan --convergence`
        write_fitted_constants(run_dir, problem, preset.selfcal_prior_weight, folder / FITTED_NAME)
    final, reached, traffic, replans = _metrics(reports, budget_s, preset.target_accuracy)
    result = RunResult(
        method=method,
        alpha=setting.alpha,
        seed=setting.seed,
        num_devices=setting.num_devices,
        tier_mix=setting.tier_mix,
        plan_id=plan.plan_id,
        rounds=len(reports),
        time_budget_s=budget_s,
        final_accuracy=final,
        time_to_target_s=reached,
        traffic_bytes=traffic,
        wall_time_s=time.perf_counter() - started,
        replans=replans,
        sim_time_s=tuple(r.sim_time_s for r in reports),
        accuracy=tuple(r.eval_accuracy for r in reports),
        **_observed(reports, preset.evaluate_intra_rounds),
        resolved_rule=resolved_rule,
    )
    write_sealed_json(done, result)
    return result


def _loop_fork(
    preset: ExperimentPreset, method: str, problem: PlanningProblem, plan: Plan, seed: int, folder: Path, run_dir: Path
) -> LoopFork | None:
    """Where the static run of ``method`` is copied for its closed loop (``validation.loop_fork``), or ``None``."""
    twin = loop_twin(method, preset.methods)
    if twin is None or (run_dir / "checkpoint.json").exists():  # a resumed run yields only its new rounds
        return None
    loop_dir = folder.parent / twin
    if (loop_dir / "run").exists() or (loop_dir / RESULT_NAME).exists():
        return None
    loop_replanner = _replanner(preset, LOOP_METHOD, problem, plan, seed)
    return LoopFork(plan, loop_replanner, loop_dir, preset.max_rounds)  # type: ignore[arg-type]


def _replanner(preset: ExperimentPreset, method: str, problem: PlanningProblem, plan: Plan, seed: int) -> object:
    """The closed loop of ``method``: feedback, self-calibration with a probe, or the method's own (FedRA)."""
    from hierfedlora.planner.feedback import Replanner

    if method == LOOP_METHOD:
        return Replanner(problem, every_rounds=preset.replan_every, absent_rounds=preset.absent_rounds)
    if method == SELFCAL_METHOD:
        return self_calibrating_replanner(
            problem,
            num_groups=len(plan.groups),
            every_rounds=preset.replan_every,
            probe_after_round=preset.probe_after_round,
            probe_groups=preset.probe_groups,
            prior_weight=preset.selfcal_prior_weight,
            seed=seed,
            absent_rounds=preset.absent_rounds,
        )
    return method_replanner(method, problem, settings=preset.baseline, seed=seed)


def _observed(reports: Sequence[RoundReport], wanted: bool) -> dict[str, tuple[float, ...]]:
    """Every evaluation of the global model in time order: each round's intra observations, then its end."""
    if not wanted:
        return {}
    points = [(e.sim_time_s, e.eval_accuracy) for r in reports for e in (*r.intra_evals, r)]
    return {
        "observed_sim_time_s": tuple(t for t, _ in points),
        "observed_accuracy": tuple(a for _, a in points),
    }


def _run_reports(
    plan: Plan,
    fleet: Fleet,
    problem: PlanningProblem,
    options: object,
    run_dir: Path,
    context: object,
    replanner: object,
    truth: tuple[DeviceProfile, ...],
    budget_s: float,
    preset: ExperimentPreset,
    fork: LoopFork | None = None,
) -> list[RoundReport]:
    """Run (or resume) until the budget or the round cap; return every committed report, read back from
    the log after it is repaired, never pieced together from what was yielded: a crash between a round's
    checkpoint and its report line must not lose that round (nor run one round too many)."""
    from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
    from hierfedlora.runtime.engine import run_plan
    from hierfedlora.runtime.run_folder import check_run_folder, repair_report_log

    resume = (run_dir / "checkpoint.json").exists()
    check_run_folder(run_dir, resume=True, field="run folder")
    reports = repair_report_log(run_dir)  # rounds 1..c exactly, c the committed round
    if reports and (reports[-1].sim_time_s >= budget_s or len(reports) >= preset.max_rounds):
        return reports
    for report in run_plan(
        plan,
        fleet,
        problem.cost_model,
        options,  # type: ignore[arg-type]
        run_dir,
        resume=resume,
        context=context,  # type: ignore[arg-type]
        replanner=replanner,  # type: ignore[arg-type]
        clock_devices=truth,
        faults=preset.faults,
        # a round ending past the budget counts in no metric; its intra-round evaluations may (T3)
        stop_past_s=None if preset.evaluate_intra_rounds else budget_s,
    ):
        if fork is not None:
            fork.after_round(report, run_dir)
        if report.sim_time_s >= budget_s:
            break
    if fork is not None:
        fork.finish(run_dir)
    return read_reports(run_dir / REPORTS_NAME)
