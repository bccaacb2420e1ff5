"""Calibrate the convergence model from finished runs: one ``(R0, beta, c)`` for all of them.

A single run identifies only its plan's progress rate (``planner.refit``); runs of different
plans on the same kind of fleet — flat FedAvg (``tau = 1``, no skew), hierarchical at ``tau = 4``
with random (skewed) or near-IID groups, per-device depths — separate the depth exponent
``beta`` and the skew sensitivity ``c`` from ``R0``. :func:`calibrate` pools them with
:func:`hierfedlora.planner.refit.pooled_refit` (the (F3) loss fit, with the prior as a weak
anchor). The intended use is a *pilot*: run cheap baselines on a fleet the evaluation never uses
(``hierfedlora experiment pilot``), calibrate, and plan with the result
(``hierfedlora calibrate runs/experiment-pilot --out convergence.json``).

Examples
--------
>>> from hierfedlora.planner.types import ConvergenceParams
>>> calibrate([], prior=ConvergenceParams()).fit.params == ConvergenceParams()
True
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.feedback import history_from_reports
from hierfedlora.planner.fleet import load_fleet
from hierfedlora.planner.io import read_json
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.refit import ConvergenceFit, History, pooled_refit
from hierfedlora.planner.types import ConvergenceParams, CostModel, PlanningProblem
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import PLANS_FOLDER

__all__ = ["CalibrationRun", "Calibration", "calibrate", "experiment_runs", "read_run_history"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class CalibrationRun:
    """One finished run: its name (``setting/method``), its plans and reports, and its problem."""

    name: str
    history: History
    problem: PlanningProblem


@dataclasses.dataclass(frozen=True, slots=True)
class Calibration:
    """The pooled fit and the runs it used (``names``), each with its number of rounds."""

    fit: ConvergenceFit
    names: tuple[str, ...]
    rounds: tuple[int, ...]


def read_run_history(run_dir: Path) -> History:
    """The plans a run folder used, in order, each with its reports (``reports.jsonl`` + ``plans/``).

    Raises
    ------
    InvalidInputError
        No readable report log, or a report whose plan is not in ``plans/`` (``reports[i].plan_id``).
    """
    reports = read_reports(run_dir / REPORTS_NAME)
    ids = {r.plan_id for r in reports}
    plans = {
        plan_id: read_json(Plan, run_dir / PLANS_FOLDER / f"{plan_id}.json")
        for plan_id in sorted(ids)
        if (run_dir / PLANS_FOLDER / f"{plan_id}.json").is_file()
    }
    return history_from_reports(reports, plans)


def experiment_runs(experiment_dir: Path, methods: Sequence[str] | None = None) -> list[CalibrationRun]:
    """Every finished run of an experiment folder (``hierfedlora experiment --out``), with its problem.

    The problem of a setting is rebuilt as the harness built it: the folder's ``preset.json``,
    ``cost_model.json`` and the setting's ``fleet.json``. ``methods`` keeps only those methods;
    an unfinished run without reports is skipped with a warning naming it.

    Raises
    ------
    InvalidInputError
        The folder lacks ``preset.json`` or ``cost_model.json``, or a finished run (``result.json``)
        has an empty report log.
    """
    from hierfedlora.validation.experiment_presets import read_preset
    from hierfedlora.validation.experiments import problem_for

    missing = [name for name in ("preset.json", "cost_model.json") if not (experiment_dir / name).is_file()]
    if missing:
        raise InvalidInputError(
            [
                Issue(
                    "experiment_dir",
                    "an experiment folder (hierfedlora experiment --out) with preset.json and cost_model.json",
                    f"no {' or '.join(missing)} in {experiment_dir}",
                )
            ]
        )
    preset = read_preset(experiment_dir / "preset.json")
    cost_model = read_json(CostModel, experiment_dir / "cost_model.json")
    runs = []
    for setting in preset.settings():
        folder = experiment_dir / "runs" / setting.name
        if not (folder / "fleet.json").is_file():
            continue
        problem = problem_for(preset, load_fleet(folder / "fleet.json"), cost_model, setting.seed)
        for method in preset.methods:
            run_dir = folder / method / "run"
            if (methods is None or method in methods) and (run_dir / REPORTS_NAME).is_file():
                name = f"{experiment_dir.name}/{setting.name}/{method}"
                history = read_run_history(run_dir)
                if history:
                    runs.append(CalibrationRun(name, history, problem))
                elif (folder / method / "result.json").is_file():  # finished, yet no report: never dropped silently
                    raise InvalidInputError(
                        [Issue(f"{name}/run/{REPORTS_NAME}", "the reports of the finished run's rounds", "no report")]
                    )
                else:
                    log.warning("%s has no committed round yet: not used", name)
    return runs


def calibrate(runs: Sequence[CalibrationRun], *, prior: ConvergenceParams, prior_weight: float = 1.0) -> Calibration:
    """Fit one set of convergence constants to every run's eval losses (:func:`pooled_refit`).

    Raises
    ------
    InvalidInputError
        From :func:`pooled_refit` (a bad history, runs with different numbers of classes, a bad weight).
    """
    fit = pooled_refit([(run.history, run.problem) for run in runs], prior, prior_weight=prior_weight)
    return Calibration(
        fit=fit,
        names=tuple(run.name for run in runs),
        rounds=tuple(sum(len(reports) for _, reports in run.history) for run in runs),
    )
