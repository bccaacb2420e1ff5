"""The target of an experiment, resolved after its runs, and the times to reach it.

A preset fixes its target before any run (``ExperimentPreset``): an absolute ``target_accuracy``, or
a rule ``target_relative = r``:

(T1) target of setting s = r * max over methods m of mean over seeds of final_accuracy(m, s),

"r times the best final accuracy any method reached on that setting", where a setting is a grid point
without its seed (every seed of a setting shares its target). The rule is fixed in advance; only the
level comes from the runs, so it is computed here, after all of them.

Times to a level, within the run's budget:

(T2) at round ends: the end of the first round at or above it (``RunResult.time_to_target_s``);
(T3) interpolated: linear between the two evaluations around the first crossing, over every
     evaluation the run recorded: round ends, plus the observed global model after each intra-group
     round when the preset asked for it (``RunResult.observed_*``; ``planner.intra_evals``). A run at
     or above the level at its first evaluation keeps that evaluation's time.

Examples
--------
>>> from hierfedlora.validation.experiment_presets import RunResult
>>> run = RunResult(method="fedlora", alpha=0.5, seed=0, plan_id="p", rounds=2, time_budget_s=10.0,
...     final_accuracy=0.4, time_to_target_s=None, traffic_bytes=0, wall_time_s=1.0, replans=0,
...     sim_time_s=(4.0, 8.0), accuracy=(0.2, 0.4), observed_sim_time_s=(2.0, 4.0, 6.0, 8.0),
...     observed_accuracy=(0.1, 0.2, 0.4, 0.4))
>>> time_at_round_end(run, 0.3), interpolated_time(run, 0.3)
(8.0, 5.0)
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

from hierfedlora.validation.experiment_presets import ExperimentPreset, RunResult, Setting

__all__ = [
    "SettingKey",
    "describe_target",
    "evaluations",
    "finalize",
    "interpolated_time",
    "resolve_targets",
    "retarget",
    "time_at_round_end",
]

SettingKey = tuple[float | None, int | None, str | None]


def _key(result: RunResult) -> SettingKey:
    return result.alpha, result.num_devices, result.tier_mix


def resolve_targets(preset: ExperimentPreset, results: Sequence[RunResult]) -> dict[SettingKey, float]:
    """The target of every setting of ``results``: the preset's absolute one, or (T1)."""
    keys = list(dict.fromkeys(_key(r) for r in results))
    if preset.target_relative is None:
        return {key: float(preset.target_accuracy) for key in keys}  # type: ignore[arg-type]
    targets = {}
    for key in keys:
        by_method: dict[str, list[float]] = {}
        for r in results:
            if _key(r) == key:
                by_method.setdefault(r.method, []).append(r.final_accuracy)
        best = max(statistics.fmean(values) for values in by_method.values())
        targets[key] = preset.target_relative * best
    return targets


def time_at_round_end(result: RunResult, level: float) -> float | None:
    """(T2): the end of the first round within the budget at or above ``level``, else ``None``."""
    pairs = zip(result.sim_time_s, result.accuracy, strict=True)
    return next((t for t, a in pairs if t <= result.time_budget_s and a >= level), None)


def evaluations(result: RunResult) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Every recorded evaluation (times, accuracies): the observed curve if any, else the round ends."""
    if result.observed_sim_time_s:
        return result.observed_sim_time_s, result.observed_accuracy
    return result.sim_time_s, result.accuracy


def interpolated_time(result: RunResult, level: float) -> float | None:
    """(T3): the first crossing of ``level`` within the budget, linear between evaluations, else ``None``."""
    previous: tuple[float, float] | None = None
    for t, a in zip(*evaluations(result), strict=True):
        if t > result.time_budget_s:
            return None
        if a >= level:
            if previous is None:
                return t
            t0, a0 = previous
            return t0 + (level - a0) / (a - a0) * (t - t0)
        previous = (t, a)
    return None


def finalize(preset: ExperimentPreset, results: Sequence[RunResult]) -> tuple[list[RunResult], dict[SettingKey, float]]:
    """Each setting's target (T1) and ``results`` with their times to it (unchanged for an absolute target)."""
    targets = resolve_targets(preset, results)
    return (list(results) if preset.target_relative is None else retarget(results, targets)), targets


def retarget(results: Sequence[RunResult], targets: dict[SettingKey, float]) -> list[RunResult]:
    """``results`` with ``time_to_target_s`` recomputed (T2) against each setting's target."""
    return [dataclasses.replace(r, time_to_target_s=time_at_round_end(r, targets[_key(r)])) for r in results]


def describe_target(preset: ExperimentPreset, targets: dict[SettingKey, float], varied: tuple[str, ...]) -> str:
    """The report's sentence on the target: the absolute level, or the rule (T1) and each setting's level."""
    if preset.target_relative is None:
        text = f"Target accuracy **{preset.target_accuracy:.0%}**"
    else:
        levels = ", ".join(
            f"{Setting(key[0], key[1] or 0, key[2] or '', 0, varied).label} {100 * level:.1f}%"
            for key, level in targets.items()
        )
        text = (
            f"Target **{preset.target_relative:.0%} of the best final accuracy of any method on the setting** "
            "(mean over its seeds), a rule fixed in the preset before any run; the level comes from the runs and "
            f"is resolved after them (validation/targets.py (T1)): {levels}"
        )
    if preset.evaluate_intra_rounds:
        text += (
            ". The global model is also evaluated, as an observer, after every intra-group round (the groups' "
            "current adapters merged layer by layer with the run's rule, timed when a round cut there would end; "
            "not charged to the clock; planner/intra_evals.py): the interpolated time to target uses those "
            "evaluations too"
        )
    return text
