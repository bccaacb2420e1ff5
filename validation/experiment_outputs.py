"""An experiment's written outputs: results.json/csv, summary.csv, the plots and ``report.md``.

:func:`write_outputs` writes them all atomically; :func:`render_report` is the Markdown report (assumptions,
table, the headline against the paper's bar, plots); the summaries and tables come from
:mod:`hierfedlora.validation.experiment_report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from hierfedlora.planner.fleets.data_sources import DataSummary
from hierfedlora.planner.io import atomic_write_text, read_json, to_dict
from hierfedlora.planner.types import CostModel, PlanningProblem
from hierfedlora.validation.baselines import describe_method
from hierfedlora.validation.experiment_presets import (
    LOOP_METHOD,
    SELFCAL_METHOD,
    ExperimentPreset,
    RunResult,
    Setting,
    split_method,
)
from hierfedlora.validation.experiment_report import (
    SettingKey,
    csv_text,
    interpolated_time_to,
    markdown_table,
    pair_speedup,
    setting_key,
    setting_label,
    summarize,
    varied_axes,
)
from hierfedlora.validation.method_rules import is_best
from hierfedlora.validation.rule_report import rule_lines
from hierfedlora.validation.targets import (
    describe_target,
    evaluations,
    finalize,
    resolve_targets,
)

__all__ = ["headline", "regenerate_command", "render_report", "write_outputs"]


def write_outputs(
    preset: ExperimentPreset,
    cost_model: CostModel,
    results: Sequence[RunResult],
    folder: Path,
    *,
    data: DataSummary | None = None,
    note: str | None = None,
) -> None:
    """results.json, results.csv, summary.csv, one PNG per setting, report.md (all atomic).

    ``data`` describes the data set (classes, sizes, majority, chance); without it, ``folder/data.json``
    (written by ``run_experiment``) is read if present, else the report says the data set is unknown.
    ``note`` is a paragraph the report puts first, under its title (a partial report says what it holds).
    """
    if data is None and (folder / "data.json").is_file():
        data = read_json(DataSummary, folder / "data.json")
    from hierfedlora.validation.plots import plot_curves

    results, targets = finalize(preset, results)  # a relative target (T1) is known only now, and its times
    atomic_write_text(folder / "results.json", json.dumps([to_dict(r) for r in results], indent=2) + "\n")
    curve_fields = ("sim_time_s", "accuracy", "observed_sim_time_s", "observed_accuracy")
    flat = [{k: v for k, v in to_dict(r).items() if k not in curve_fields} for r in results]
    atomic_write_text(folder / "results.csv", csv_text(flat))
    fine = preset.target_relative is not None or preset.evaluate_intra_rounds
    rows = summarize(results, targets if fine else None)
    atomic_write_text(folder / "summary.csv", csv_text(rows))
    varied = varied_axes(results)
    plots = []
    for key in dict.fromkeys(setting_key(r) for r in results):
        runs = [r for r in results if setting_key(r) == key]
        curves: dict[str, list[tuple[Sequence[float], Sequence[float]]]] = {}
        for r in runs:
            curves.setdefault(r.method, []).append(evaluations(r))
        label = setting_label(runs[0], varied)
        name = f"accuracy_{label}.png"
        seeds = len({r.seed for r in runs})
        plot_curves(
            curves,
            folder / name,
            title=f"{preset.name}: {label.replace('_', ' = ', 1)} ({seeds} seed(s))",
            target=targets[key],
            budget_s=max(r.time_budget_s for r in runs),
            chance=None if data is None else data.chance,
        )
        plots.append(name)
    report = render_report(preset, cost_model, results, rows, plots, data=data, targets=targets, note=note)
    atomic_write_text(folder / "report.md", report)


def regenerate_command(preset: ExperimentPreset) -> str:
    """The command that runs ``preset`` again: its name when it is a built-in preset (with ``--data`` when
    only its data differs), else ``--preset-file`` on the ``preset.json`` the experiment folder holds."""
    from hierfedlora.validation.experiment_presets import PRESETS

    builtin = PRESETS.get(preset.name)
    if builtin == preset:
        return f"hierfedlora experiment {preset.name} --out <folder>"
    if builtin is not None and dataclasses.replace(builtin, data=preset.data) == preset:
        return f"hierfedlora experiment {preset.name} --data {preset.data} --out <folder>"
    return "hierfedlora experiment --preset-file <this folder>/preset.json --out <folder>"


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_LOOP_TEXT = "HierFedLoRA with the closed loop: refits convergence constants and device speeds from the reports"


def _cost_source(cost_model: CostModel) -> str:
    """Where the costs that plan and clock the runs come from, naming the host they were measured on (a
    committed cost model was measured elsewhere than where the report is written)."""
    where = cost_model.measured_on.strip()
    if where.startswith("analytic"):
        return where
    return f"measured by `models/profiling` on {where or 'a host the cost model does not name'}"


def _method_text(method: str, preset: ExperimentPreset) -> str:
    name, rule = split_method(method)
    if is_best(method):  # "hierfavg@best": resolved per setting by the harness
        return f"{_method_text(name, preset)}; under HierFedLoRA's best aggregation rule in each setting (`@best`)"
    if name != method:  # "hierfedlora@fedex": the method's text and its rule
        return f"{_method_text(name, preset)}; aggregation rule `{rule}`"
    if method == LOOP_METHOD:
        return _LOOP_TEXT
    if method == SELFCAL_METHOD:
        return (
            "HierFedLoRA self-calibrating (validation/selfcal.py): plans with the preset's convergence constants as "
            f"a weak prior (weight {preset.selfcal_prior_weight:g} in every refit), runs one probe round after round "
            f"{preset.probe_after_round} with {preset.probe_groups} groups at another depth or tau "
            "(planner/probe.py; charged on the same simulated clock), re-plans from the refit right after it and "
            f"then every {preset.replan_every} rounds; its fitted constants are in its folder's convergence.json"
        )
    return describe_method(method)


def render_report(
    preset: ExperimentPreset,
    cost_model: CostModel,
    results: Sequence[RunResult],
    rows: Sequence[dict[str, object]],
    plots: Sequence[str],
    *,
    data: DataSummary | None = None,
    targets: dict[SettingKey, float] | None = None,
    note: str | None = None,
) -> str:
    """The Markdown report: assumptions first, then the table, the headline comparison and the plots.

    ``targets`` are the settings' resolved targets (default: resolved here from ``results``); ``note`` a
    paragraph put first, under the title.
    """
    from hierfedlora.planner.fleets.tiers import TIERS, resolve_tier_mix

    tier_lines = []
    for mix_name in preset.tier_mixes:
        tier_lines.append(f"- Device mix `{mix_name}`:")
        for name, share in resolve_tier_mix(mix_name).items():
            tier = TIERS[name]
            tier_lines.append(
                f"  - `{name}` ({share:.0%}), {tier.description}: compute scale {tier.compute_scale[0]:.2f}-"
                f"{tier.compute_scale[1]:.2f} x the profiled host's step, memory {tier.memory_bytes[0] / 2**30:.1f}-"
                f"{tier.memory_bytes[1] / 2**30:.1f} GiB, link `{tier.network}`. Sources: {'; '.join(tier.sources)}"
            )
    problem_defaults = PlanningProblem.__dataclass_fields__
    wall = sum(r.wall_time_s for r in results)
    levels = ", ".join(Setting(a, 0, "", 0).label for a in preset.single_seed_alphas)
    single = f" ({levels} with seed {preset.seeds[0]} only)" if preset.single_seed_alphas else ""
    lines = [
        f"# Experiment `{preset.name}`",
        "",
        *((note, "") if note else ()),
        f"{preset.description}. Generated {time.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this host'} "
        f"({platform.machine()}, {_cpu_count()} CPU cores, Python {platform.python_version()}); "
        f"{len(results)} runs, {wall / 60:.1f} min of run wall time. Regenerate with "
        f"`{regenerate_command(preset)}`.",
        "",
        "## Fixed before any result (the preset)",
        "",
        f"- {describe_target(preset, targets or resolve_targets(preset, results), varied_axes(results))}; "
        "simulated-time budget "
        f"**{preset.budget_fedlora_rounds:g} x FedLoRA's predicted round time** on each setting's fleet "
        "(known from the cost model before training).",
        f"- Grid: non-IID level {', '.join(Setting(a, 0, '', 0).label for a in preset.alphas)}; fleet sizes "
        f"{list(preset.fleet_sizes)}; device mixes {list(preset.tier_mixes)}; seeds {list(preset.seeds)}{single}; "
        f"{preset.num_groups} groups for the grouped methods.",
        f"- Training: the packaged all-MiniLM-L6-v2, LoRA r=8 alpha=16 on query/value, {preset.optimizer} lr "
        f"{preset.learning_rate:g} (fresh optimizer every intra-group round), batch {preset.batch_size}, "
        f"{preset.max_seq_len} tokens, {preset.local_steps} local steps per intra-group round, "
        f"at most {preset.samples_per_device} training samples per device, evaluation on {preset.eval_samples} "
        f"held-out samples.",
        f"- Tuning effort, the same for every method: one optimizer ({preset.optimizer}) and learning rate "
        f"({preset.learning_rate:g}), chosen on FedLoRA alone (alpha 0.5, seed 0, 5-8 rounds) from AdamW "
        "{0.005, 0.01, 0.02, 0.05} and SGD {0.3, 1.0} before any other method ran. "
        "HierFAVG and the ablations that fix tau use "
        f"tau = {preset.baseline.uniform_intra_rounds}; LEGEND's deadline is the "
        f"{preset.baseline.legend_deadline_quantile:g} quantile of the devices' full-depth round times.",
        *(f"- Tuning: {tuning}" for tuning in preset.tuning_notes),
        *(() if preset.tuning_notes else ("- No per-method tuning.",)),
        f"- Closed loop: re-plan every {preset.replan_every} rounds (planner/feedback.py), 5% minimum predicted gain"
        + (
            f"; at once when a device is absent {preset.absent_rounds} rounds running or a group falls below its "
            "minimum size."
            if preset.faults is not None
            else "."
        ),
        *(
            (
                f"- Faults (runtime/faults.py, the same draws for every method of a setting): dropout "
                f"{preset.faults.dropout:g} per device and round, stragglers {preset.faults.straggler_frac:g} "
                f"({preset.faults.straggler_factor:g}x slower), deadline quantile "
                f"{preset.faults.deadline_quantile}, poisoned updates {preset.faults.poison_frac:g}; updates "
                f"screened (non-finite, or norm > {preset.faults.norm_bound_ratio:g}x the group median).",
            )
            if preset.faults is not None
            else ()
        ),
        "- Metrics: final accuracy after the last round within the budget; time to target = simulated time at the "
        "end of the first round at or above the target; speed-up vs FedLoRA = FedLoRA's time to target over the "
        "method's (same setting and seed); speed-up at FedLoRA's final accuracy = FedLoRA's time to its own final "
        "accuracy over the method's time to that accuracy (a secondary metric whose level comes from FedLoRA's run, "
        "not from the preset). The bar section also gives the speed-up to the target with each run's crossing "
        "interpolated linearly between the round ends around it (secondary: runs are evaluated at round ends "
        "only, so the primary time to target is a whole number of rounds).",
        "",
        "## Assumptions",
        "",
        f"- Data: {data.sentence() if data else f'`{preset.data}` (not described: no data.json)'}. "
        "10% held out (stratified); Dirichlet label skew over devices (Flower Datasets' partitioner).",
        *tier_lines,
        f"- True device speeds differ from the profiles the planners see by a seeded mean-one lognormal factor "
        f"(sigma {preset.speed_error_sigma:g}), the same for every method; only the closed loop measures it.",
        f"- Network: device links from their tiers; group aggregator to server backhaul "
        f"{problem_defaults['backhaul_mbps'].default} Mbps, intra-group latency "
        f"{problem_defaults['intra_latency_s'].default} s, global aggregation latency "
        f"{problem_defaults['global_latency_s'].default} s.",
        f"- Costs: {_cost_source(cost_model)} ({cost_model.model_name}, "
        f"batch {cost_model.batch_size}, {cost_model.seq_len} tokens), scaled per device (planner/costs.py C1-C8). "
        f"Convergence model prior: depth exponent {preset.convergence.depth_exponent:g}, skew sensitivity "
        f"{preset.convergence.skew_sensitivity:g}, reference rounds {preset.convergence.reference_rounds:g} "
        "(planner/convergence.py).",
        "",
        "## Methods",
        "",
        *[f"- `{m}`: {_method_text(m, preset)}" for m in preset.methods],
        "",
        "## Results (mean ± standard deviation over seeds)",
        "",
        markdown_table(rows),
        "",
        *headline(results, targets or resolve_targets(preset, results)),
        "",
        *rule_lines(results),
        "## Accuracy against simulated time",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    return "\n".join(lines)


def headline(results: Sequence[RunResult], target: float | dict[SettingKey, float] | None = None) -> list[str]:
    """Our best HierFedLoRA variant against FedLoRA and the best other baseline, per setting.

    With a ``target`` (one level, or one per setting), the speed-up to it is also given with
    :func:`interpolated_time_to`.
    """
    lines = ["## Against the paper's bar (+1.6 to +4.2 points, at least 2.1x faster)", ""]
    ours = ("hierfedlora", LOOP_METHOD, SELFCAL_METHOD)
    varied = varied_axes(results)
    for key in dict.fromkeys(setting_key(r) for r in results):
        by_method: dict[str, list[RunResult]] = {}
        for r in results:
            if setting_key(r) == key:
                by_method.setdefault(r.method, []).append(r)
        acc = {m: statistics.fmean(r.final_accuracy for r in rs) for m, rs in by_method.items()}
        mine = [m for m in ours if m in acc]
        others = [m for m in acc if m not in ours and m != "fedlora"]
        if not mine or "fedlora" not in acc:
            continue
        best_mine = max(mine, key=acc.__getitem__)
        label = setting_label(by_method[best_mine][0], varied)
        level = target.get(key) if isinstance(target, dict) else target
        observed = any(r.observed_sim_time_s for rs in by_method.values() for r in rs)
        between = "evaluations (round ends and intra-group rounds)" if observed else "round ends"
        text = (
            f"- {label}: `{best_mine}` {100 * acc[best_mine]:.1f}% vs FedLoRA "
            f"{100 * acc['fedlora']:.1f}% ({100 * (acc[best_mine] - acc['fedlora']):+.1f} points)"
        )
        if others:
            best_other = max(others, key=acc.__getitem__)
            text += (
                f"; best other baseline `{best_other}` {100 * acc[best_other]:.1f}% "
                f"({100 * (acc[best_mine] - acc[best_other]):+.1f} points)"
            )
        for versus in ("fedlora", *(others and [max(others, key=acc.__getitem__)])):
            pairs = {r.seed: r for r in by_method[versus]}
            ratios = [pair_speedup(pairs[r.seed], r) for r in by_method[best_mine] if r.seed in pairs]
            smooth = [
                ref_t / t
                for r in by_method[best_mine]
                if r.seed in pairs
                and level is not None
                and (ref_t := interpolated_time_to(pairs[r.seed], level))
                and (t := interpolated_time_to(r, level))
            ]
            for index, what in ((0, "to the target"), (1, f"to `{versus}`'s final accuracy")):
                known = [value for p in ratios if (value := p[index]) is not None]
                text += (
                    f"; speed-up {what} vs `{versus}` {statistics.fmean(known):.2f}x ({len(known)}/{len(ratios)} seeds)"
                    if known
                    else f"; speed-up {what} vs `{versus}`: not measurable (missed within the budget)"
                )
                if index == 0 and smooth:
                    text += f" ({statistics.fmean(smooth):.2f}x interpolated between {between}, {len(smooth)} seeds)"
        lines.append(text + ".")
    return lines
