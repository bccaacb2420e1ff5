"""Plots from round reports: accuracy against simulated time (PNG, matplotlib Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from hierfedlora.planner.outcomes import RoundReport

__all__ = ["plot_accuracy_vs_time"]


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
    if chance is not None:
        axes.axhline(100.0 * chance, linestyle="--", color="grey", linewidth=1, label="chance")
    axes.set_xlabel("simulated time (minutes)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    temp = target.with_name(f".{target.name}.tmp.png")
    figure.savefig(temp, format="png")
    plt.close(figure)
    os.replace(temp, target)
    return target
