"""An experiment's summaries over seeds, speed-ups, times to target and the Markdown table.

Pure functions of :class:`~hierfedlora.validation.experiment_presets.RunResult` s; the files and the report
are written by :mod:`hierfedlora.validation.experiment_outputs`. Metric definitions:
:mod:`hierfedlora.validation.experiments`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence

from hierfedlora.validation.experiment_presets import (
    RunResult,
    Setting,
)
from hierfedlora.validation.targets import (
    interpolated_time,
)

__all__ = ["markdown_table", "speedups", "summarize"]

SettingKey = tuple[float | None, int | None, str | None]


def setting_key(result: RunResult) -> SettingKey:
    """The grid point of a result, without its seed."""
    return result.alpha, result.num_devices, result.tier_mix


def varied_axes(results: Sequence[RunResult]) -> tuple[str, ...]:
    """The grid axes (fleet size, device mix) that take more than one value among ``results``."""
    return tuple(
        axis
        for axis, values in (
            ("fleet", {r.num_devices for r in results}),
            ("mix", {r.tier_mix for r in results}),
        )
        if len(values) > 1
    )


def setting_label(result: RunResult, varied: tuple[str, ...] = ()) -> str:
    """``alpha_0.5`` (plus ``_n40`` / ``_phones`` for the axes in ``varied``)."""
    return Setting(result.alpha, result.num_devices or 0, result.tier_mix or "", result.seed, varied).label


def _first_time(result: RunResult, accuracy: float) -> float | None:
    pairs = zip(result.sim_time_s, result.accuracy, strict=True)
    return next((t for t, a in pairs if t <= result.time_budget_s and a >= accuracy), None)


def interpolated_time_to(result: RunResult, accuracy: float) -> float | None:
    """When ``result`` first reaches ``accuracy`` within the budget, linear between the evaluations around it.

    The evaluations are the round ends, plus the observed global model after each intra-group round
    when the run recorded them (:func:`hierfedlora.validation.targets.interpolated_time`, (T3)).
    Without those, a time to a target at round ends is a whole number of rounds; this secondary
    measure puts the crossing on the line between the last evaluation below and the first at or above
    ``accuracy``. A run at or above it at its first evaluation keeps that time.
    """
    return interpolated_time(result, accuracy)


def pair_speedup(reference: RunResult, result: RunResult) -> tuple[float | None, float | None]:
    """(speed-up to the target, speed-up to ``reference``'s final accuracy) of ``result`` over ``reference``.

    The first is the reference's time to the preset's target over the result's; the second the
    reference's time to its own final accuracy over the result's time to that accuracy (both within
    the budget). ``None`` where a time is missing.
    """
    to_target = None
    if reference.time_to_target_s and result.time_to_target_s:
        to_target = reference.time_to_target_s / result.time_to_target_s
    ref_time, mine = _first_time(reference, reference.final_accuracy), _first_time(result, reference.final_accuracy)
    return to_target, (ref_time / mine if ref_time and mine else None)


def speedups(results: Sequence[RunResult]) -> dict[tuple[str, SettingKey, int], tuple[float | None, float | None]]:
    """Per (method, setting, seed): :func:`pair_speedup` over FedLoRA on the same setting and seed."""
    reference = {(setting_key(r), r.seed): r for r in results if r.method == "fedlora"}
    out: dict[tuple[str, SettingKey, int], tuple[float | None, float | None]] = {}
    for r in results:
        ref = reference.get((setting_key(r), r.seed))
        out[(r.method, setting_key(r), r.seed)] = (None, None) if ref is None else pair_speedup(ref, r)
    return out


def _mean_spread(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None, 0
    spread = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), spread, len(present)


def summarize(results: Sequence[RunResult], targets: dict[SettingKey, float] | None = None) -> list[dict[str, object]]:
    """Mean and standard deviation over seeds, per (setting, method), in the order the runs appear.

    With ``targets`` (per setting, :func:`hierfedlora.validation.targets.resolve_targets`), each row also
    gives its target and the interpolated time to it ((T3), ``time_to_target_interp_s``).
    """
    speed = speedups(results)
    varied = varied_axes(results)
    keys = list(dict.fromkeys((setting_key(r), r.method) for r in results))
    rows = []
    for key, method in keys:
        runs = [r for r in results if setting_key(r) == key and r.method == method]
        acc, acc_sd, _ = _mean_spread([r.final_accuracy for r in runs])
        ttt, ttt_sd, reached = _mean_spread([r.time_to_target_s for r in runs])
        spd, spd_sd, _ = _mean_spread([speed[(method, key, r.seed)][0] for r in runs])
        spd_ref, spd_ref_sd, _ = _mean_spread([speed[(method, key, r.seed)][1] for r in runs])
        traffic, _, _ = _mean_spread([float(r.traffic_bytes) for r in runs])
        rows.append(
            {
                "setting": setting_label(runs[0], varied),
                "alpha": setting_label(runs[0]),
                "num_devices": runs[0].num_devices,
                "tier_mix": runs[0].tier_mix,
                "method": method,
                "seeds": len(runs),
                "final_accuracy": acc,
                "final_accuracy_sd": acc_sd,
                "reached_target": reached,
                "time_to_target_s": ttt,
                "time_to_target_sd": ttt_sd,
                "speedup_vs_fedlora": spd,
                "speedup_sd": spd_sd,
                "speedup_at_fedlora_final": spd_ref,
                "speedup_at_fedlora_final_sd": spd_ref_sd,
                "traffic_mb": None if traffic is None else traffic / 1e6,
                "replans": sum(r.replans for r in runs),
                "wall_s": sum(r.wall_time_s for r in runs),
            }
        )
        if targets is not None:
            interp, interp_sd, _ = _mean_spread([interpolated_time(r, targets[key]) for r in runs])
            rows[-1].update(
                {"target": targets[key], "time_to_target_interp_s": interp, "time_to_target_interp_sd": interp_sd}
            )
    return rows


def csv_text(rows: Sequence[dict[str, object]]) -> str:
    """``rows`` (dicts with the same keys) as CSV text with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: object, spec: str, sd: object = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = format(value, spec)
    return f"{text} ± {format(sd, spec)}" if isinstance(sd, float) and sd > 0 else text


def _scaled(value: object, factor: float) -> float | None:
    return None if value is None else float(value) * factor  # type: ignore[arg-type]


def markdown_table(rows: Sequence[dict[str, object]]) -> str:
    """The summary as a Markdown table (time in simulated minutes, accuracy in percent).

    Rows from ``summarize(..., targets)`` add the target and the interpolated time to it.
    """
    if rows and "time_to_target_interp_s" in rows[0]:
        return _table_with_targets(rows)
    lines = [
        "| setting | method | final accuracy (%) | reached target | time to target (min) | speed-up vs FedLoRA "
        "| speed-up at FedLoRA's final accuracy | traffic (MB) | re-plans |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['method']} "
            f"| {_fmt(_scaled(row['final_accuracy'], 100), '.1f', _scaled(row['final_accuracy_sd'], 100))} "
            f"| {row['reached_target']}/{row['seeds']} "
            f"| {_fmt(_scaled(row['time_to_target_s'], 1 / 60), '.2f', _scaled(row['time_to_target_sd'], 1 / 60))} "
            f"| {_fmt(row['speedup_vs_fedlora'], '.2f', row['speedup_sd'])} "
            f"| {_fmt(row['speedup_at_fedlora_final'], '.2f', row['speedup_at_fedlora_final_sd'])} "
            f"| {_fmt(row['traffic_mb'], '.1f')} | {row['replans']} |"
        )
    return "\n".join(lines)


def _table_with_targets(rows: Sequence[dict[str, object]]) -> str:
    lines = [
        "| setting | method | final accuracy (%) | target (%) | reached target | time to target, round ends (min) "
        "| time to target, interpolated (min) | speed-up vs FedLoRA | traffic (MB) | re-plans |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['method']} "
            f"| {_fmt(_scaled(row['final_accuracy'], 100), '.1f', _scaled(row['final_accuracy_sd'], 100))} "
            f"| {_fmt(_scaled(row['target'], 100), '.1f')} | {row['reached_target']}/{row['seeds']} "
            f"| {_fmt(_scaled(row['time_to_target_s'], 1 / 60), '.2f', _scaled(row['time_to_target_sd'], 1 / 60))} "
            f"| {_fmt(_scaled(row['time_to_target_interp_s'], 1 / 60), '.2f', _scaled(row['time_to_target_interp_sd'], 1 / 60))} "  # noqa: E501
            f"| {_fmt(row['speedup_vs_fedlora'], '.2f', row['speedup_sd'])} "
            f"| {_fmt(row['traffic_mb'], '.1f')} | {row['replans']} |"
        )
    return "\n".join(lines)
