"""``hierfedlora experiment PRESET``: every method on the same fleets, seeds, costs and clock; tables, plots, report."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``experiment`` subcommand."""
    from hierfedlora.validation.experiment_presets import PRESETS

    parser = commands.add_parser(
        "experiment",
        help="run a preset comparison of HierFedLoRA against the baselines (table, plots, report)",
        description="Run a preset grid (non-IID level x seeds x methods) with real LoRA fine-tuning on simulated "
        "devices; write results.json/csv, summary.csv, accuracy_*.png and report.md to --out. "
        "Interrupted runs resume where they stopped when the command is run again with the same --out. "
        + " ".join(f"'{name}': {preset.description}." for name, preset in PRESETS.items()),
    )
    parser.add_argument("preset", nargs="?", choices=sorted(PRESETS), help="which built-in preset to run")
    parser.add_argument(
        "--preset-file",
        type=Path,
        default=None,
        help="a preset as JSON (the fields of validation.experiment_presets.ExperimentPreset; "
        "fleet_sizes and tier_mixes are grid axes) instead of a built-in one",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="the preset's data set instead of its own: 'wordnet', 'janeausten', a .csv/.jsonl file of text,label "
        "rows or a folder of them (the preset is saved with it; default folder runs/experiment-NAME-DATA)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default runs/experiment-NAME); with --partial-report, where that report goes "
        "(default DIR/partial)",
    )
    parser.add_argument(
        "--partial-report",
        type=Path,
        default=None,
        metavar="DIR",
        help="run nothing: write the report, tables and plots of the runs finished so far in the experiment "
        "folder DIR (it may be running: nothing there is locked or changed), counting only the seeds on which "
        "every method has finished; relative targets come from those seeds only",
    )
    parser.add_argument(
        "--cost-model", type=Path, default=None, help="a CostModel JSON to use instead of measuring this host"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run the grid's runs in this many processes side by side, each with an equal share of the cores "
        "as torch threads (default 1: one process, every thread). A run computes the same as in one process with "
        "that many threads; with fewer threads float rounding differs and may move an evaluation row or two. "
        "Each worker holds its own model and caches (about 1.2 GB at the paper preset's scale). On a 2-core host "
        "it gains little (the paper preset's alpha 0.1 setting: 1.09x); it is for machines whose cores one run "
        "cannot keep busy",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Run ``experiment``."""
    from tqdm import tqdm

    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.planner.io import read_json
    from hierfedlora.planner.types import CostModel
    from hierfedlora.validation.experiments import PRESETS, markdown_table, read_preset, run_experiment, summarize
    from hierfedlora.validation.targets import finalize

    if args.partial_report is not None:
        return _partial(args)
    if (args.preset is None) == (args.preset_file is None):
        raise InvalidInputError(
            [Issue("preset", f"either a preset name ({', '.join(sorted(PRESETS))}) or --preset-file", args.preset)]
        )
    preset = PRESETS[args.preset] if args.preset else read_preset(args.preset_file)
    default_out = Path("runs") / f"experiment-{preset.name}"
    if args.data is not None and args.data != preset.data:
        preset = dataclasses.replace(preset, data=args.data)
        default_out = default_out.with_name(f"{default_out.name}-{Path(args.data).stem or 'data'}")
    out: Path = args.out or default_out
    cost_model = read_json(CostModel, args.cost_model) if args.cost_model else None
    total = len(preset.settings()) * len(preset.methods)
    with tqdm(total=total, desc=f"experiment {preset.name}", unit="run", file=sys.stderr) as bar:

        def progress(line: str) -> None:
            bar.n = int(line.split("/", 1)[0]) - 1
            bar.set_postfix_str(line.split(" ", 1)[1])
            bar.refresh()

        results = run_experiment(preset, out, cost_model=cost_model, progress=progress, workers=args.workers)
        bar.n = total
        bar.refresh()
    results, targets = finalize(preset, results)
    fine = preset.target_relative is not None or preset.evaluate_intra_rounds
    sys.stdout.write(markdown_table(summarize(results, targets if fine else None)) + "\n")
    sys.stdout.write(f"report: {out / 'report.md'}\n")
    return 0


def _partial(args: argparse.Namespace) -> int:
    """``--partial-report DIR``: the report of DIR's finished runs, nothing run."""
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.validation.experiment_presets import read_preset
    from hierfedlora.validation.experiment_report import markdown_table, summarize
    from hierfedlora.validation.partial_report import write_partial_report
    from hierfedlora.validation.targets import finalize

    given = [name for name in ("preset", "preset_file", "data", "cost_model") if getattr(args, name) is not None]
    if given:
        expected = "nothing besides --out with --partial-report (the folder's own preset and costs are used)"
        raise InvalidInputError([Issue(given[0].replace("_", "-"), expected, getattr(args, given[0]))])
    report = write_partial_report(args.partial_report, args.out)
    preset = read_preset(args.partial_report / "preset.json")
    results, targets = finalize(preset, report.results)
    fine = preset.target_relative is not None or preset.evaluate_intra_rounds
    sys.stdout.write(markdown_table(summarize(results, targets if fine else None)) + "\n")
    sys.stdout.write(
        f"partial report ({report.finished} of {report.total} runs finished, {len(report.included)} whole "
        f"seed(s) included): {report.out / 'report.md'}\n"
    )
    return 0
