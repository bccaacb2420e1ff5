"""``hierfedlora calibrate EXPERIMENT_DIR...``: fit the convergence constants to finished runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``calibrate`` subcommand."""
    parser = commands.add_parser(
        "calibrate",
        help="fit the convergence model's constants (R0, beta, c) to the runs of experiment folders",
        description="Pool every finished run of the given experiment folders (hierfedlora experiment --out) and "
        "fit one set of convergence constants to their eval losses (planner.refit.pooled_refit). Runs of "
        "different plans (flat, hierarchical, per-device depths) make beta and c identifiable. Writes the "
        "ConvergenceParams JSON to --out: use it as the 'convergence' of a preset file or a problem JSON.",
    )
    parser.add_argument("experiments", nargs="+", type=Path, help="experiment folders with finished runs")
    parser.add_argument("--out", required=True, type=Path, help="where to write the ConvergenceParams JSON")
    parser.add_argument(
        "--methods", default=None, help="comma-separated methods to use (default: every method of the folders)"
    )
    parser.add_argument(
        "--prior", type=Path, default=None, help="a ConvergenceParams JSON as the prior (default: the first preset's)"
    )
    parser.add_argument("--prior-weight", type=float, default=1.0, help="weight of the prior in the fit (default 1)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run ``calibrate``."""
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.planner.io import read_json, write_json
    from hierfedlora.planner.types import ConvergenceParams
    from hierfedlora.validation.calibration import calibrate, experiment_runs
    from hierfedlora.validation.experiment_presets import read_preset

    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    runs = [run for folder in args.experiments for run in experiment_runs(folder, methods)]
    if not runs:
        raise InvalidInputError(
            [
                Issue(
                    "experiments",
                    "folders with at least one finished run" + (" of --methods" if methods else ""),
                    [str(f) for f in args.experiments],
                )
            ]
        )
    prior = (
        read_json(ConvergenceParams, args.prior)
        if args.prior
        else read_preset(args.experiments[0] / "preset.json").convergence
    )
    result = calibrate(runs, prior=prior, prior_weight=args.prior_weight)
    write_json(args.out, result.fit.params)
    fit = result.fit
    sys.stdout.write(
        f"{len(runs)} runs, {fit.num_points} rounds; residual {fit.residual_rms:.3f} nats (rms)\n"
        + "".join(f"  {name}: {rounds} rounds\n" for name, rounds in zip(result.names, result.rounds, strict=True))
        + f"prior:  R0 {prior.reference_rounds:.4g}, beta {prior.depth_exponent:.4g}, c {prior.skew_sensitivity:.4g}\n"
        + f"fitted: R0 {fit.params.reference_rounds:.4g}, beta {fit.params.depth_exponent:.4g}, "
        f"c {fit.params.skew_sensitivity:.4g}\n" + f"written: {args.out}\n"
    )
    return 0
