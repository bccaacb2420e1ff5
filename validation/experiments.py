"""The experiment harness: every method on the same fleets, data, seeds, cost model and clock.

An experiment is a :class:`ExperimentPreset` (fixed before any result is seen: grid, methods,
hyperparameters, the simulated-time budget and the target accuracy) run by :func:`run_experiment`:

1. measure the model's costs on this host once (or take a given cost model);
2. for every setting of the grid (non-IID level alpha x fleet size x device mix x seed, see
   :mod:`hierfedlora.validation.experiment_presets`) build the fleet: the preset's data set
   (``data``: WordNet glosses by default, :mod:`hierfedlora.planner.fleets.data_sources`) partitioned
   over the setting's devices, drawn from its tier mix; the devices' *true* speeds (what the simulated
   clock charges) differ from their profiled ones by a seeded lognormal factor
   (``speed_error_sigma``), the same truth for every method;
3. for every method build its plan (``validation.baselines``) from the profiles and run it with the
   same runtime until the simulated clock passes the budget; ``hierfedlora_loop`` adds the closed
   loop (``planner.feedback.Replanner``), which sees the true step times in the reports; a method
   under an explicit rule runs before any ``NAME@best`` method, which runs under the rule resolved
   from the setting's finished HierFedLoRA runs (:mod:`hierfedlora.validation.method_rules`);
4. write ``results.json`` / ``results.csv`` (one row per run), ``summary.csv`` (mean and spread
   over seeds), ``accuracy_<setting>.png`` (accuracy against simulated time, one line per method)
   and ``report.md`` (every assumption, the tables, the plots), by
   :mod:`hierfedlora.validation.experiment_report`.

Nothing is lost when interrupted: each run commits every round (``runtime.engine``) and writes
``result.json`` when done; a second call skips finished runs and resumes unfinished ones.

Metrics, per run (definitions fixed here, before any run):

- ``final_accuracy``: test accuracy of the merged model after the last round that ended within the
  budget (``sim_time_s <= time_budget_s``);
- ``time_to_target_s``: simulated time at the end of the first round whose accuracy reached the
  target, ``None`` if none within the budget (a relative target, ``target_relative``, is resolved
  after all runs and the time recomputed then: :mod:`hierfedlora.validation.targets`);
- the interpolated time to target (report only): linear between the evaluations around the first
  crossing, round ends plus, with ``evaluate_intra_rounds``, the observed global model after every
  intra-group round (``RunResult.observed_*``);
- ``traffic_bytes``: device bytes up and down until the budget;
- ``speedup``: FedLoRA's time to target over the method's, same setting and seed (``None`` if
  either did not reach the target);
- ``speedup_at_fedlora_final`` (secondary): FedLoRA's time to its own final accuracy over the
  method's time to that accuracy, same setting and seed (``None`` if the method never reached it
  within the budget). The target of the first is fixed by the preset; this one's level comes from
  FedLoRA's run, and says how much sooner a method gets to where FedLoRA ends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.io import write_json
from hierfedlora.planner.outcomes import Plan, RoundReport
from hierfedlora.planner.sealed import read_sealed_json, write_sealed_json
from hierfedlora.planner.types import CostModel, DeviceProfile, Fleet, PlanningProblem, SolverOptions
from hierfedlora.validation.baselines import make_method_plan, method_replanner, problem_under_rule
from hierfedlora.validation.experiment_outputs import write_outputs
from hierfedlora.validation.experiment_presets import (
    ALL_METHODS,
    LOOP_METHOD,
    PRESETS,
    SELFCAL_METHOD,
    ExperimentPreset,
    RunResult,
    Setting,
    alpha_name,
    read_preset,
    split_method,
)
from hierfedlora.validation.experiment_report import markdown_table, summarize
from hierfedlora.validation.method_rules import is_best, resolve_best_rule, stage_order
from hierfedlora.validation.selfcal import FITTED_NAME, self_calibrating_replanner, write_fitted_constants

__all__ = [
    "ALL_METHODS",
    "LOOP_METHOD",
    "PRESETS",
    "ExperimentPreset",
    "RunResult",
    "Setting",
    "alpha_name",
    "clock_devices_for",
    "head_for",
    "markdown_table",
    "problem_for",
    "read_preset",
    "run_experiment",
    "summarize",
    "write_outputs",
]

log = logging.getLogger(__name__)

RESULT_NAME = "result.json"


def clock_devices_for(devices: Sequence[DeviceProfile], sigma: float, seed: int) -> tuple[DeviceProfile, ...]:
    """The devices as they really are: each profiled speed times a seeded mean-one lognormal factor."""
    if sigma == 0:
        return tuple(devices)
    rng = np.random.default_rng([seed, 2024])
    factors = rng.lognormal(mean=-(sigma**2) / 2, sigma=sigma, size=len(devices))
    return tuple(
        dataclasses.replace(d, compute_scale=d.compute_scale * float(f)) for d, f in zip(devices, factors, strict=True)
    )


def problem_for(preset: ExperimentPreset, fleet: Fleet, cost_model: CostModel, seed: int) -> PlanningProblem:
    """The planning problem every method of a setting shares: the fleet, the cost model, the preset's knobs."""
    return PlanningProblem(
        devices=fleet.devices,
        cost_model=cost_model,
        num_groups=preset.num_groups,
        local_steps=preset.local_steps,
        batch_size=preset.batch_size,
        solver=SolverOptions(seed=seed, time_limit_s=preset.plan_time_limit_s),
        convergence=preset.convergence,
    )


def _metrics(reports: Sequence[RoundReport], budget_s: float, target: float | None) -> tuple[float, float | None, int]:
    within = [r for r in reports if r.sim_time_s <= budget_s] or list(reports[:1])
    reached = None if target is None else next((r.sim_time_s for r in within if r.eval_accuracy >= target), None)
    traffic = sum(r.upload_bytes + r.download_bytes for r in within)
    return within[-1].eval_accuracy, reached, traffic


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
    started = time.perf_counter()
    with lock_folder(run_dir):
        reports = _run_reports(plan, fleet, problem, options, run_dir, context, replanner, truth, budget_s, preset)
    if method == SELFCAL_METHOD:  # the constants this run fitted, for `hierfedlora plan --convergence`
        write_fitted_constants(run_dir, problem, preset.selfcal_prior_weight, folder / FITTED_NAME)
    final, reached, traffic = _metrics(reports, budget_s, preset.target_accuracy)
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
        replans=len({r.plan_id for r in reports}) - 1,
        sim_time_s=tuple(r.sim_time_s for r in reports),
        accuracy=tuple(r.eval_accuracy for r in reports),
        **_observed(reports, preset.evaluate_intra_rounds),
        resolved_rule=resolved_rule,
    )
    write_sealed_json(done, result)
    return result


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
    ):
        if report.sim_time_s >= budget_s:
            break
    return read_reports(run_dir / REPORTS_NAME)


def _refuse_another_presets_folder(preset: ExperimentPreset, folder: Path) -> None:
    """Finished runs are reused by folder name alone: a folder made with other knobs would mix results."""
    saved = folder / "preset.json"
    if not saved.is_file():
        return
    try:
        before = read_preset(saved)
    except InvalidInputError:
        before = None
    if before == preset:
        return
    changed = (
        ["preset.json (unreadable)"]
        if before is None
        else [f.name for f in dataclasses.fields(preset) if getattr(before, f.name) != getattr(preset, f.name)]
    )
    raise InvalidInputError(
        [
            Issue(
                "out",
                "a new folder, or one made with the same preset (its finished runs are reused)",
                f"{folder}, made with a preset that differs in {', '.join(changed)}",
            )
        ]
    )


def run_experiment(
    preset: ExperimentPreset,
    out: str | Path,
    *,
    cost_model: CostModel | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[RunResult]:
    """Run ``preset`` into ``out`` (resumable) and write the results, plots and report.

    Parameters
    ----------
    preset : ExperimentPreset
    out : path
        Output folder; finished runs found there are reused, unfinished ones resumed.
    cost_model : CostModel, optional
        Costs to plan and clock with; by default measured on this host once and saved as
        ``out/cost_model.json`` (reused on a second call).
    progress : callable, optional
        Called with a line before each run (the CLI feeds a progress bar).

    Raises
    ------
    InvalidInputError
        ``out`` made with another preset or in use by another process (it is locked for the whole
        experiment, each run folder too), or a setting the data cannot fill (before anything is written).
    """
    from hierfedlora.planner.fleet import make_fleet
    from hierfedlora.planner.fleets.data_sources import describe_data, read_data
    from hierfedlora.runtime.run_folder import lock_folder

    folder = Path(out)
    _refuse_another_presets_folder(preset, folder)
    data = read_data(preset.data)
    fleets = {  # every fleet first: a setting the data cannot fill fails before anything is written
        setting: make_fleet(
            data,
            num_devices=setting.num_devices,
            partition="iid" if setting.alpha is None else "dirichlet",
            alpha=1.0 if setting.alpha is None else setting.alpha,
            tier_mix=setting.tier_mix,
            max_samples_per_device=preset.samples_per_device,
            seed=setting.seed,
        )
        for setting in preset.settings()
    }
    with lock_folder(folder):
        _refuse_another_presets_folder(preset, folder)  # again, now that no one else can write it
        write_json(folder / "preset.json", preset)
        summary = describe_data(data)
        write_json(folder / "data.json", summary)
        results, cost_model = _run_settings(preset, folder, fleets, cost_model, data.num_classes, progress)
        write_outputs(preset, cost_model, results, folder, data=summary)
    return results


def _run_settings(
    preset: ExperimentPreset,
    folder: Path,
    fleets: dict[Setting, Fleet],
    cost_model: CostModel | None,
    num_classes: int,
    progress: Callable[[str], None] | None,
) -> tuple[list[RunResult], CostModel]:
    from hierfedlora.models.catalog import ModelSpec
    from hierfedlora.models.profiling import measure_cost_model
    from hierfedlora.planner.fleet import save_fleet
    from hierfedlora.runtime.engine import prepare_run
    from hierfedlora.runtime.options import RunOptions

    cost_path = folder / "cost_model.json"
    if cost_model is None:
        if cost_path.exists():
            cost_model = read_sealed_json(CostModel, cost_path)  # measured once: resume needs the same
        else:
            log.info("measuring the model's per-layer costs on this host ...")
            cost_model = measure_cost_model(
                ModelSpec(path="default", num_labels=num_classes),
                batch_size=preset.batch_size,
                seq_len=preset.max_seq_len,
            )
    cost_model = head_for(cost_model, num_classes)
    write_sealed_json(cost_path, cost_model)
    results: list[RunResult] = []
    total = len(fleets) * len(preset.methods)
    for setting, fleet in fleets.items():
        seed = setting.seed
        setting_dir = folder / "runs" / setting.name
        setting_dir.mkdir(parents=True, exist_ok=True)
        save_fleet(setting_dir / "fleet.json", fleet)
        problem = problem_for(preset, fleet, cost_model, seed)
        truth = clock_devices_for(fleet.devices, preset.speed_error_sigma, seed)
        reference = make_method_plan("fedlora", problem, settings=preset.baseline)
        budget_s = preset.budget_fedlora_rounds * reference.predicted_round_time_s
        context = None
        done: dict[str, RunResult] = {}
        for method in stage_order(preset.methods):  # explicit rules first: `@best` resolves from their results
            if progress:
                progress(f"{len(results) + len(done) + 1}/{total} {setting.label} seed {seed} {method}")
            if context is None and not (setting_dir / method / RESULT_NAME).exists():
                options = RunOptions(
                    rounds=1, max_seq_len=preset.max_seq_len, eval_samples=preset.eval_samples, seed=seed
                )
                context = prepare_run(reference, fleet, options)
            resolved = resolve_best_rule(list(done.values())) if is_best(method) else None
            result = _run_one(
                preset, method, setting, problem, fleet, truth, budget_s, setting_dir / method, context, resolved
            )
            log.info(
                "%s %s seed %d: final accuracy %.3f, time to target %s, %.0f s wall",
                setting.label,
                method if resolved is None else f"{method} ({resolved})",
                seed,
                result.final_accuracy,
                "-" if result.time_to_target_s is None else f"{result.time_to_target_s:.0f} s",
                result.wall_time_s,
            )
            done[method] = result
        results.extend(done[method] for method in preset.methods)
    return results, cost_model


def head_for(cost_model: CostModel, num_classes: int) -> CostModel:
    """``cost_model`` with a head of ``num_classes`` classes (derived, ``with_num_labels``) when it was
    profiled with another count; unchanged when it matches or its class count was never recorded."""
    from hierfedlora.planner.types import with_num_labels

    if cost_model.num_labels is None or cost_model.num_labels == num_classes:
        return cost_model
    log.info("cost model head re-sized from %d to %d classes", cost_model.num_labels, num_classes)
    return with_num_labels(cost_model, num_classes)
