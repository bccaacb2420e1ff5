"""A report of the runs an experiment has finished so far, written while it runs (or after it was stopped).

A long experiment (``hierfedlora experiment long``: hours on two cores) runs setting by setting and seed by
seed, and writes each finished run's ``result.json`` (sealed) as it goes. :func:`write_partial_report` reads
those without running anything and without taking the folder's lock (every file it reads was written
atomically), and writes the usual outputs (report, tables, plots) to another folder, by default
``<folder>/partial``:

(P1) **Only whole seeds.** A setting's seed enters the report only when every method of the preset has
     finished on it: a mean over the seeds that happen to be done for one method and not another would compare
     different fleets. Runs of incomplete seeds are listed as left out.
(P2) **Provisional targets.** A relative target (90% of the best mean final accuracy on the setting) is
     resolved from the included seeds only; it moves as more seeds finish, and the report says so at its top.

Examples
--------
>>> from hierfedlora.validation.experiment_presets import PRESETS
>>> from hierfedlora.validation.run_result import Setting
>>> complete_seeds({Setting(0.5, 80, "paper", 0): {"fedlora", "hierfedlora"},
...                 Setting(0.5, 80, "paper", 1): {"fedlora"}}, ("fedlora", "hierfedlora"))
[Setting(alpha=0.5, num_devices=80, tier_mix='paper', seed=0, varied=())]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.data_sources import DataSummary
from hierfedlora.planner.io import read_json
from hierfedlora.planner.sealed import read_sealed_json
from hierfedlora.planner.types import CostModel
from hierfedlora.validation.experiment_presets import ExperimentPreset, read_preset
from hierfedlora.validation.experiments import RESULT_NAME
from hierfedlora.validation.run_result import RunResult, Setting

__all__ = ["PartialReport", "complete_seeds", "finished_runs", "write_partial_report"]


@dataclasses.dataclass(frozen=True, slots=True)
class PartialReport:
    """What :func:`write_partial_report` found and wrote.

    ``included`` are the settings (with their seed) whose every method finished, in the preset's order;
    ``left_out`` the finished runs of other seeds (``"<setting>/<method>"``); ``total`` the runs of the preset.
    """

    out: Path
    total: int
    finished: int
    included: tuple[Setting, ...]
    left_out: tuple[str, ...]
    results: tuple[RunResult, ...]


def finished_runs(preset: ExperimentPreset, folder: Path) -> dict[Setting, dict[str, RunResult]]:
    """Every finished run of ``preset`` in ``folder``, by setting (with its seed) and method, in the preset's order.

    Raises
    ------
    InvalidInputError
        A ``result.json`` that is not a valid, intact result (its seal names a changed value).
    """
    found: dict[Setting, dict[str, RunResult]] = {}
    for setting in preset.settings():
        for method in preset.methods:
            path = folder / "runs" / setting.name / method / RESULT_NAME
            if path.is_file():
                result = read_sealed_json(RunResult, path)
                found.setdefault(setting, {})[method] = dataclasses.replace(
                    result, num_devices=setting.num_devices, tier_mix=setting.tier_mix
                )
    return found


def complete_seeds(finished: Mapping[Setting, object], methods: Sequence[str]) -> list[Setting]:
    """(P1) The settings (with their seed) on which every one of ``methods`` has finished."""
    return [setting for setting, done in finished.items() if set(methods) <= set(done)]  # type: ignore[arg-type]


def _note(preset: ExperimentPreset, report: PartialReport, folder: Path) -> str:
    included = ", ".join(f"{s.label} seed {s.seed}" for s in report.included) or "none"
    lines = [
        f"**Partial report** of `{folder}`, written {time.strftime('%Y-%m-%d %H:%M %Z')}: {report.finished} of "
        f"{report.total} runs of the experiment had finished. It includes only the seeds on which "
        f"every method had finished ({included}); "
        + (
            f"{len(report.left_out)} finished runs of other seeds are left out ({', '.join(report.left_out)}). "
            if report.left_out
            else "no finished run is left out. "
        )
    ]
    if preset.target_relative is not None:
        lines.append(
            "The relative target below is resolved from the included seeds only and will move as more seeds finish. "
        )
    lines.append("The figures below are true for these runs; the full report replaces this one when all have run.")
    return "".join(lines)


def write_partial_report(folder: str | Path, out: str | Path | None = None) -> PartialReport:
    """Write the report, tables and plots of ``folder``'s finished runs to ``out`` (default ``folder/partial``).

    Parameters
    ----------
    folder : path
        An experiment folder (``hierfedlora experiment --out``), finished or not: ``preset.json``,
        ``cost_model.json`` and ``runs/``.
    out : path, optional
        Where to write; the experiment folder itself is refused (its own report is the experiment's).

    Raises
    ------
    InvalidInputError
        ``folder`` is not an experiment folder, ``out`` is the folder itself, no seed is complete yet, or a
        result or contract file there is corrupt.
    """
    from hierfedlora.validation.experiment_outputs import write_outputs

    folder = Path(folder)
    target = Path(out) if out is not None else folder / "partial"
    missing = [name for name in ("preset.json", "cost_model.json") if not (folder / name).is_file()]
    if missing:
        expected = "an experiment folder (hierfedlora experiment --out) with preset.json and cost_model.json"
        raise InvalidInputError([Issue("report", expected, f"a folder without {', '.join(missing)}")])
    if target.resolve() == folder.resolve():
        raise InvalidInputError([Issue("report-out", "a folder other than the experiment's own", str(target))])
    preset = read_preset(folder / "preset.json")
    cost_model = read_sealed_json(CostModel, folder / "cost_model.json")
    finished = finished_runs(preset, folder)
    included = complete_seeds(finished, preset.methods)
    if not included:
        done = sum(len(methods) for methods in finished.values())
        expected = "a folder where every method has finished on at least one setting and seed"
        raise InvalidInputError([Issue("report", expected, f"{done} finished runs and no whole seed")])
    results = tuple(finished[s][m] for s in included for m in preset.methods)
    left_out = tuple(f"{s.name}/{m}" for s, done in finished.items() if s not in included for m in done)
    data_path = folder / "data.json"
    data = read_json(DataSummary, data_path) if data_path.is_file() else None
    report = PartialReport(
        out=target,
        total=len(preset.settings()) * len(preset.methods),
        finished=sum(len(methods) for methods in finished.values()),
        included=tuple(included),
        left_out=left_out,
        results=results,
    )
    target.mkdir(parents=True, exist_ok=True)
    write_outputs(preset, cost_model, results, target, data=data, note=_note(preset, report, folder))
    return report
