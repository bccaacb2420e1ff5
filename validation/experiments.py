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
   same runtime for the rounds that end within the budget (a round that would end past it is not
   trained: no metric reads it; with ``evaluate_intra_rounds`` it is, for the evaluations inside it);
   ``hierfedlora_loop`` adds the closed loop (``planner.feedback.Replanner``), which sees the true
   step times in the reports, and starts from the static ``hierfedlora`` run up to its first re-plan
   (:mod:`hierfedlora.validation.loop_fork`: the same rounds are not trained twice); a method
   under an explicit rule runs before any ``NAME@best`` method, which runs under the rule resolved
   from the setting's finished HierFedLoRA runs (:mod:`hierfedlora.validation.method_rules`);
4. write ``results.json`` / ``results.csv`` (one row per run), ``summary.csv`` (mean and spread
   over seeds), ``accuracy_<setting>.png`` (accuracy against simulated time, one line per method)
   and ``report.md`` (every assumption, the tables, the plots), by
   :mod:`hierfedlora.validation.experiment_report`.

Nothing is lost when interrupted: each run commits every round (``runtime.engine``) and writes
``result.json`` when done; a second call skips finished runs and resumes unfinished ones. One run (plan, run
or resume, read back, metrics) is :mod:`hierfedlora.validation.experiment_run`.

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
- ``replans``: the plans a run switched to in the rounds within the budget;
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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.io import write_json
from hierfedlora.planner.sealed import read_sealed_json, write_sealed_json
from hierfedlora.planner.types import CostModel, DeviceProfile, Fleet, PlanningProblem, SolverOptions
from hierfedlora.validation.baselines import make_method_plan
from hierfedlora.validation.experiment_outputs import write_outputs
from hierfedlora.validation.experiment_pool import SettingInputs, prepare_setting, run_method
from hierfedlora.validation.experiment_presets import (
    ALL_METHODS,
    LOOP_METHOD,
    PRESETS,
    ExperimentPreset,
    RunResult,
    Setting,
    alpha_name,
    read_preset,
)
from hierfedlora.validation.experiment_report import markdown_table, summarize
from hierfedlora.validation.experiment_run import RESULT_NAME
from hierfedlora.validation.method_rules import is_best, resolve_best_rule, stage_order

__all__ = [
    "ALL_METHODS",
    "LOOP_METHOD",
    "PRESETS",
    "RESULT_NAME",
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
    workers: int = 1,
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
        Called with a line ``"k/total ..."`` before each run, or with ``workers`` > 1 as each run
        finishes (the CLI feeds a progress bar).
    workers : int
        Processes that run the grid's runs side by side, each with an equal share of the cores as
        torch threads (:mod:`hierfedlora.validation.experiment_pool`). A run's results depend on its
        thread count only through float rounding (an evaluation row or two may move).

    Raises
    ------
    InvalidInputError
        ``out`` made with another preset or in use by another process (it is locked for the whole
        experiment, each run folder too), ``workers`` not an integer >= 1, or a setting the data cannot
        fill (before anything is written).
    """
    from hierfedlora.planner.fleet import make_fleet
    from hierfedlora.planner.fleets.data_sources import describe_data, read_data
    from hierfedlora.runtime.run_folder import lock_folder

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError([Issue("workers", "an integer >= 1", workers)])
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
        results, cost_model = _run_settings(preset, folder, fleets, cost_model, data.num_classes, progress, workers)
        write_outputs(preset, cost_model, results, folder, data=summary)
    return results


def _run_settings(
    preset: ExperimentPreset,
    folder: Path,
    fleets: dict[Setting, Fleet],
    cost_model: CostModel | None,
    num_classes: int,
    progress: Callable[[str], None] | None,
    workers: int,
) -> tuple[list[RunResult], CostModel]:
    from hierfedlora.models.catalog import ModelSpec
    from hierfedlora.models.profiling import measure_cost_model

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
    inputs = [_setting_inputs(preset, folder, setting, fleet, cost_model) for setting, fleet in fleets.items()]
    if workers > 1:
        from hierfedlora.validation.experiment_pool import run_in_workers

        by_setting = run_in_workers(preset, inputs, workers, progress, on_result=_log_result)
        return [by_setting[i.setting][method] for i in inputs for method in preset.methods], cost_model
    results: list[RunResult] = []
    total = len(fleets) * len(preset.methods)
    for setting_inputs in inputs:
        setting = setting_inputs.setting
        context = None
        done: dict[str, RunResult] = {}
        for method in stage_order(preset.methods):  # explicit rules first: `@best` resolves from their results
            if progress:
                progress(f"{len(results) + len(done) + 1}/{total} {setting.label} seed {setting.seed} {method}")
            if context is None and not (setting_inputs.folder / method / RESULT_NAME).exists():
                context = prepare_setting(preset, setting_inputs)
            resolved = resolve_best_rule(list(done.values())) if is_best(method) else None
            result = run_method(preset, setting_inputs, method, context, resolved)
            _log_result(setting_inputs, result)
            done[method] = result
        results.extend(done[method] for method in preset.methods)
    return results, cost_model


def _setting_inputs(
    preset: ExperimentPreset, folder: Path, setting: Setting, fleet: Fleet, cost_model: CostModel
) -> SettingInputs:
    """The fleet (saved in the setting's folder), problem, true speeds and budget every method of ``setting`` shares."""
    from hierfedlora.planner.fleet import save_fleet

    setting_dir = folder / "runs" / setting.name
    setting_dir.mkdir(parents=True, exist_ok=True)
    save_fleet(setting_dir / "fleet.json", fleet)
    problem = problem_for(preset, fleet, cost_model, setting.seed)
    reference = make_method_plan("fedlora", problem, settings=preset.baseline)
    return SettingInputs(
        setting=setting,
        fleet=fleet,
        problem=problem,
        truth=clock_devices_for(fleet.devices, preset.speed_error_sigma, setting.seed),
        budget_s=preset.budget_fedlora_rounds * reference.predicted_round_time_s,
        folder=setting_dir,
        reference=reference,
    )


def _log_result(inputs: SettingInputs, result: RunResult) -> None:
    rule = result.resolved_rule
    log.info(
        "%s %s seed %d: final accuracy %.3f, time to target %s, %.0f s wall",
        inputs.setting.label,
        result.method if rule is None else f"{result.method} ({rule})",
        inputs.setting.seed,
        result.final_accuracy,
        "-" if result.time_to_target_s is None else f"{result.time_to_target_s:.0f} s",
        result.wall_time_s,
    )


def head_for(cost_model: CostModel, num_classes: int) -> CostModel:
    """``cost_model`` with a head of ``num_classes`` classes (derived, ``with_num_labels``) when it was
    profiled with another count; unchanged when it matches or its class count was never recorded."""
    from hierfedlora.planner.types import with_num_labels

    if cost_model.num_labels is None or cost_model.num_labels == num_classes:
        return cost_model
    log.info("cost model head re-sized from %d to %d classes", cost_model.num_labels, num_classes)
    return with_num_labels(cost_model, num_classes)
