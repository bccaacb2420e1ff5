"""Plots of a what-if study: time to target and traffic against the swept axis (PNG, matplotlib Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hierfedlora.planner.whatif import StudyRow
from hierfedlora.validation.plots import save_png

__all__ = ["plot_study"]


def _label(row: StudyRow, others: Sequence[str]) -> str:
    return ", ".join(f"{axis} {getattr(row, axis)}" for axis in others) or "all"


def plot_study(
    rows: Sequence[StudyRow], axis: str, others: Sequence[str], folder: str | os.PathLike[str]
) -> list[Path]:
    """Write ``time_to_target.png`` and ``traffic.png``: one line per setting of ``others`` against ``axis``.

    Rows without a plan are left out of the lines (their status is in the CSV). Numeric axes that
    span more than a factor of 20 get a log scale. Returns the paths written (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[StudyRow]] = {}
    for row in rows:
        if row.time_to_target_s is not None:
            lines.setdefault(_label(row, others), []).append(row)
    values = [getattr(r, axis) for r in rows]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    log_x = numeric and min(values) > 0 and max(values) / min(values) > 20
    written = []
    panels = (
        ("time_to_target.png", (("time_to_target_s", 1 / 60, "time to target (simulated minutes)"),)),
        (
            "traffic.png",
            (
                ("device_traffic_to_target_bytes", 1e-9, "device traffic to target (GB)"),
                ("backhaul_traffic_to_target_bytes", 1e-9, "backhaul traffic to target (GB)"),
            ),
        ),
    )
    for name, series in panels:
        figure, axes_list = plt.subplots(1, len(series), figsize=(6.5 * len(series), 4.2), dpi=110, squeeze=False)
        for axes, (field, scale, ylabel) in zip(axes_list[0], series, strict=True):
            for label, points in lines.items():
                xs = [getattr(r, axis) for r in points]
                order = sorted(range(len(xs)), key=lambda i: xs[i] if numeric else str(xs[i]))
                axes.plot(
                    [xs[i] if numeric else str(xs[i]) for i in order],
                    [getattr(points[i], field) * scale for i in order],
                    marker="o",
                    markersize=4,
                    label=label,
                )
            if log_x:
                axes.set_xscale("log")
            if numeric and all(getattr(r, field) for r in rows if getattr(r, field) is not None):
                axes.set_yscale("log")
            axes.set_xlabel(axis)
            axes.set_ylabel(ylabel)
            axes.grid(alpha=0.3, which="both")
            axes.legend(fontsize=7)
        written.append(save_png(figure, out / name))
    return written
