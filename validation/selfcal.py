"""Self-calibration in a run: a weak prior, one probe round, a refit, and the fitted constants on disk.

The closed loop's refit (``planner.feedback``, (F3) of ``planner.refit``) identifies the convergence
constants (beta, c, R0) only from rounds of *different* structure: one plan shows one progress rate. A
self-calibrating run therefore

1. plans with the constants it is given, taken as a weak prior (``prior_weight``, e.g. 0.01, in every
   refit of the run);
2. after round ``probe_after_round`` runs one probe round (``planner.probe``): ``probe_groups`` groups
   at another depth or tau. The runtime runs it on the same simulated clock, so its cost is charged;
3. re-plans right after the probe from the refit of every round so far, then every ``every_rounds``;
4. leaves the fitted constants in ``convergence.json`` next to its run (:func:`write_fitted_constants`),
   ready for ``hierfedlora plan --convergence``: they replace the shipped defaults once a run has data.

:func:`self_calibrating_replanner` builds the replanner for the CLI (``run --self-calibrate``) and the
experiments (method ``hierfedlora_selfcal``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.feedback import Replanner, history_from_reports
from hierfedlora.planner.io import read_json, write_json
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.probe import ProbingReplanner
from hierfedlora.planner.refit import ConvergenceFit, refit_convergence
from hierfedlora.planner.types import PlanningProblem

__all__ = ["FITTED_NAME", "self_calibrating_replanner", "write_fitted_constants"]

log = logging.getLogger(__name__)

FITTED_NAME = "convergence.json"
"""The fitted ``ConvergenceParams`` a self-calibrating run leaves in its folder."""


def self_calibrating_replanner(
    problem: PlanningProblem,
    *,
    num_groups: int,
    every_rounds: int,
    probe_after_round: int,
    probe_groups: int,
    prior_weight: float,
    seed: int,
    absent_rounds: int = 1,
) -> ProbingReplanner:
    """Steps 1-3 of the module docstring for a plan of ``num_groups`` groups (at most that many probed).

    Raises
    ------
    InvalidInputError
        ``every_rounds``, ``probe_after_round`` or ``absent_rounds`` below 1, ``prior_weight`` negative or
        not finite (the probe's group count and seed are checked when the probe is drawn).
    """
    loop = Replanner(problem, every_rounds=every_rounds, absent_rounds=absent_rounds, prior_weight=prior_weight)
    return ProbingReplanner(
        loop, after_round=probe_after_round, num_groups=max(1, min(probe_groups, num_groups)), seed=seed
    )


def write_fitted_constants(
    run_dir: Path, problem: PlanningProblem, prior_weight: float, out: Path | None = None
) -> ConvergenceFit | None:
    """Refit (F3) to every committed round of ``run_dir`` and write the constants to ``out``.

    ``out`` defaults to ``run_dir/convergence.json``. The fit is recomputed from the run's reports and
    plans (``plans/``), so a resumed or finished run gives the same file. Returns the fit, or ``None``
    (nothing written) when the run has no committed round.

    Raises
    ------
    InvalidInputError
        A report naming a plan the folder does not hold.
    """
    from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports

    reports = read_reports(run_dir / REPORTS_NAME) if (run_dir / REPORTS_NAME).exists() else []
    if not reports:
        return None
    plans: dict[str, Plan] = {}
    for path in sorted((run_dir / "plans").glob("*.json")):
        try:
            plan = read_json(Plan, path)
        except InvalidInputError:
            continue  # a torn file: the history check names the plan it lacks
        plans[plan.plan_id] = plan
    fit = refit_convergence(history_from_reports(reports, plans), problem, prior_weight=prior_weight)
    write_json(out or run_dir / FITTED_NAME, fit.params)
    params = fit.params
    log.info(
        "self-calibration: beta %.3g, c %.3g, R0 %.3g from %d rounds (prior weight %g)",
        params.depth_exponent,
        params.skew_sensitivity,
        params.reference_rounds,
        len(reports),
        prior_weight,
    )
    return fit
