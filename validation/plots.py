"""Plots from round reports: accuracy against simulated time (PNG, matplotlib Agg backend)."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hierfedlora.planner.io import atomic_write_bytes
from hierfedlora.planner.outcomes import RoundReport

__all__ = ["plot_accuracy_vs_time", "plot_curves", "save_png"]


def plot_accuracy_vs_time(
    runs: Mapping[str, Sequence[RoundReport]],
    path: str | os.PathLike[str],
    *,
    title: str = "Test accuracy against simulated time",
    chance: float | None = None,
) -> Path:
    """Draw one line per run (label -> reports) and save it atomically as a PNG.

    Parameters
    ----------
    runs : mapping of str to sequence of RoundReport
        Each run's reports in round order.
    path : path-like
        Where to write the PNG (written to a temporary file, then moved into place).
    chance : float, optional
        Draw a dashed line at this accuracy (e.g. 1 / number of classes).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, reports in runs.items():
        times_min = [0.0] + [r.sim_time_s / 60.0 for r in reports]
        accuracy = [None] + [100.0 * r.eval_accuracy for r in reports]
        axes.plot(times_min[1:], accuracy[1:], marker="o", markersize=3, label=label)
    _label_accuracy_axes(axes, title=title, chance=chance, legend_size=8)
    return save_png(figure, target)


def plot_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]],
    path: str | os.PathLike[str],
    *,
    title: str,
    target: float | None = None,
    budget_s: float | None = None,
    chance: float | None = None,
) -> Path:
    """One colour per method (label -> one (sim seconds, accuracy) curve per seed), saved atomically as PNG.

    The first seed of a method carries its label; further seeds share its colour. ``target`` and
    ``budget_s`` draw the experiment's fixed target accuracy and simulated-time budget.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target_path = Path(path)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for index, (label, runs) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        for seed_index, (times_s, accuracy) in enumerate(runs):
            axes.plot(
                [t / 60.0 for t in times_s],
                [100.0 * a for a in accuracy],
                color=colour,
                alpha=1.0 if seed_index == 0 else 0.45,
                linewidth=1.4,
                marker="o",
                markersize=2.5,
                label=label if seed_index == 0 else None,
            )
    if target is not None:
        axes.axhline(100.0 * target, linestyle=":", color="black", linewidth=1, label="target")
    if budget_s is not None:
        axes.axvline(budget_s / 60.0, linestyle="--", color="black", linewidth=1, label="time budget")
    _label_accuracy_axes(axes, title=title, chance=chance, legend_size=7)
    return save_png(figure, target_path)


def _label_accuracy_axes(axes: Any, *, title: str, chance: float | None, legend_size: int) -> None:
    """The chance line (when given), the axis labels, title, grid and legend of an accuracy-against-time plot."""
    if chance is not None:
        axes.axhline(100.0 * chance, linestyle="--", color="grey", linewidth=1, label="chance")
    axes.set_xlabel("simulated time (minutes)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=legend_size)


def save_png(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out ``figure``, write it to ``path`` as a PNG atomically (``planner.io.atomic_write_bytes``) and close it.

    Raises
    ------
    StorageError
        The file cannot be written (no temporary file is left behind).
    """
    import matplotlib.pyplot as plt

    target = Path(path)
    figure.tight_layout()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    atomic_write_bytes(target, buffer.getvalue())
    return target
