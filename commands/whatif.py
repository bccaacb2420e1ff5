"""``hierfedlora whatif``: a capacity study (a cross-product of settings) -> CSV, JSON and plots.

Each setting is planned (``planner.whatif.run_point``) and kept as ``OUT/rows/<key>.json`` the
moment it finishes (atomically), so a re-run with the same ``--out`` skips finished settings and
an interrupted study resumes. Then ``results.csv``, ``results.json``, ``time_to_target.png`` and
``traffic.png`` are written from all rows. The study comes from ``--study FILE`` (the fields of
``planner.whatif.Study``) and/or flags; flags win.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from hierfedlora.commands.common import add_problem_settings, problem_options, read_json_object

__all__ = ["CRASH_AFTER_ROWS_ENV", "build_study", "register"]

log = logging.getLogger(__name__)


def _floats(text: str) -> tuple[float | None, ...]:
    """``"20,100"`` -> ``(20.0, 100.0)``; ``none`` stands for null (no limit)."""
    try:
        return tuple(None if part.strip().lower() == "none" else float(part) for part in text.split(",") if part)
    except ValueError:
        expected = "expected comma-separated numbers (or none) like 20,100"
        raise argparse.ArgumentTypeError(f"{expected}; got {text!r}") from None


def _ints(text: str) -> tuple[int | None, ...]:
    try:
        return tuple(None if part.strip().lower() == "none" else int(part) for part in text.split(",") if part)
    except ValueError:
        expected = "expected comma-separated integers (or none) like 80,800"
        raise argparse.ArgumentTypeError(f"{expected}; got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# flag dest -> Study field
AXIS_FLAGS = {
    "devices": "fleet_sizes",
    "tiers": "tier_mixes",
    "network": "networks",
    "backhaul_mbps": "backhaul_mbps",
    "server_ingress_mbps": "server_ingress_mbps",
    "groups": "num_groups",
    "cost_model": "cost_models",
    "target_loss_gap": "target_loss_gaps",
    "round_budget_s": "round_budgets_s",
    "traffic_budget_bytes": "traffic_budgets_bytes",
}
FIXED_FLAGS = {
    "fleet": "fleet_file",
    "classes": "num_classes",
    "alpha": "alpha",
    "samples_per_device": "samples_per_device",
    "seq_len": "seq_len",
    "lora_rank": "lora_rank",
    "seed": "seed",
    "name": "name",
}


CRASH_AFTER_ROWS_ENV = "HIERFEDLORA_CRASH_AFTER_ROWS"
"""Fault injection for tests: with this variable set to ``k``, the process kills itself (SIGKILL) right after
saving the ``k``-th row it planned, before the study's results are written."""


def _crash_if_asked(planned: int) -> None:
    if os.environ.get(CRASH_AFTER_ROWS_ENV, "").strip() == str(planned):
        os.kill(os.getpid(), signal.SIGKILL)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``whatif`` subcommand."""
    parser = commands.add_parser(
        "whatif",
        help="capacity study: plan a cross-product of fleet sizes, device mixes, links, models, targets, budgets",
        description="Plan every setting of a cross-product (comma-separated values per axis) on synthetic fleets "
        "(Dirichlet label skew over --classes classes, device tiers) or a real --fleet; write results.csv, "
        "results.json, time_to_target.png and traffic.png to --out. Infeasible settings are rows with the "
        "conflicting constraints named. Re-running with the same --out skips finished settings.",
    )
    parser.add_argument("--study", type=Path, default=None, help="a study JSON (fields of planner.whatif.Study)")
    parser.add_argument("--devices", type=_ints, default=None, help="fleet sizes, e.g. 80,800,8000")
    parser.add_argument("--tiers", type=_names, default=None, help="device mixes: presets (paper, phones, mixed)")
    parser.add_argument("--network", type=_names, default=None, help="link classes for all devices: 4g, 5g, wifi")
    parser.add_argument("--backhaul-mbps", type=_floats, default=None, help="aggregator-to-server links, e.g. 5,50")
    parser.add_argument(
        "--server-ingress-mbps", type=_floats, default=None, help="the server's shared link (none: unlimited)"
    )
    parser.add_argument("--groups", type=_ints, default=None, help="numbers of groups (none: N/10)")
    parser.add_argument(
        "--cost-model", type=_names, default=None, help="default, a cost model JSON, or a config.json (analytic)"
    )
    parser.add_argument("--target-loss-gap", type=_floats, default=None, help="targets as loss gap fractions")
    parser.add_argument("--round-budget-s", type=_floats, default=None, help="round budgets in seconds (none: none)")
    parser.add_argument("--traffic-budget-bytes", type=_floats, default=None, help="traffic budgets per round")
    parser.add_argument("--fleet", type=str, default=None, help="a real fleet JSON instead of synthetic fleets")
    parser.add_argument("--classes", type=int, default=None, help="classes of synthetic fleets (default 26)")
    parser.add_argument("--alpha", type=float, default=None, help="Dirichlet label skew (default 0.5)")
    parser.add_argument("--samples-per-device", type=int, default=None, help="samples per device (default 48)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sample of analytic cost models")
    parser.add_argument("--lora-rank", type=int, default=None, help="LoRA rank of analytic cost models")
    parser.add_argument("--seed", type=int, default=None, help="seed of fleets and solver (default 0)")
    parser.add_argument("--name", type=str, default=None, help="study name (default whatif)")
    add_problem_settings(
        parser,
        example="local_steps=2, solver.time_limit_s=5",
        fields="any PlanningProblem field but the axes' (their flags set them), the devices and the cost model",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/whatif-NAME)")
    parser.set_defaults(handler=handle)


def build_study(args: argparse.Namespace) -> Any:
    """The :class:`~hierfedlora.planner.whatif.Study` of ``--study`` and the flags (flags win)."""
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.planner.io import from_dict
    from hierfedlora.planner.whatif import Study

    data: dict[str, Any] = read_json_object(args.study) if args.study else {}
    for dest, field in {**AXIS_FLAGS, **FIXED_FLAGS}.items():
        value = getattr(args, dest)
        if value is not None:
            data[field] = list(value) if isinstance(value, tuple) else value
    source = str(args.study.name) if args.study else "command line"
    problem = data.get("problem", {}) or {}
    if not isinstance(problem, dict):
        raise InvalidInputError([Issue("problem", "an object of PlanningProblem fields", problem)], source)
    # a --convergence file's target_loss_gap (calibrate writes one) would meet the study's target_loss_gaps axis
    data["problem"] = problem_options(problem, args.convergence, args.settings, convergence_skip=("target_loss_gap",))
    return from_dict(Study, data, source=source)


def _csv(rows: list[Any]) -> str:
    from hierfedlora.planner.whatif import StudyRow

    names = [f.name for f in dataclasses.fields(StudyRow)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        cells = []
        for name in names:
            value = getattr(row, name)
            cells.append("; ".join(value) if isinstance(value, tuple) else "" if value is None else value)
        writer.writerow(cells)
    return buffer.getvalue()


def handle(args: argparse.Namespace) -> int:
    """Run ``whatif``."""
    from tqdm import tqdm

    from hierfedlora.planner.io import atomic_write_text, to_json
    from hierfedlora.planner.sealed import read_sealed_json, write_sealed_json
    from hierfedlora.planner.whatif import (
        GroupingCache,
        StudyRow,
        check_study_inputs,
        row_path,
        run_point,
        study_points,
    )
    from hierfedlora.runtime.run_folder import lock_folder
    from hierfedlora.validation.whatif_plots import plot_study

    study = build_study(args)
    check_study_inputs(study)  # bad files and names fail here, before --out exists
    if not getattr(args, "verbose", False):  # one line per plan would bury the progress bar
        logging.getLogger("hierfedlora.planner").setLevel(logging.WARNING)
    out: Path = args.out or Path("runs") / f"whatif-{study.name}"
    points = list(study_points(study))
    with lock_folder(out):  # a second study into the same --out exits 2 naming the process holding it
        cache = GroupingCache()
        rows: list[StudyRow] = []
        reused = 0
        with tqdm(total=len(points), desc=f"whatif {study.name}", unit="setting", file=sys.stderr) as bar:
            for point in points:
                path = row_path(out, point.key)
                if path.exists():
                    rows.append(read_sealed_json(StudyRow, path))  # a row changed since it was written: exit 2
                    reused += 1
                else:
                    bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in point.settings().items() if k in study.swept))
                    row = run_point(point, cache)
                    write_sealed_json(path, row)
                    rows.append(row)
                    _crash_if_asked(len(rows) - reused)
                bar.update()
        atomic_write_text(out / "results.csv", _csv(rows))
        atomic_write_text(
            out / "results.json",
            json.dumps({"study": json.loads(to_json(study)), "rows": [json.loads(to_json(r)) for r in rows]}, indent=2)
            + "\n",
        )
        swept = study.swept or ("fleet_size",)
        plots = plot_study(rows, swept[0], swept[1:], out)
        planned = sum(r.time_to_target_s is not None for r in rows)
        sys.stdout.write(
            f"{len(rows)} settings ({reused} reused from an earlier run), {planned} planned, {len(rows) - planned} "
            f"without a plan; {out / 'results.csv'}, {out / 'results.json'}, " + ", ".join(str(p) for p in plots) + "\n"
        )
        header = ("time to target", "round", "rounds", "groups", "depths", "status")
        sys.stdout.write("  ".join(("setting", *header)) + "\n")
        for row in rows:
            label = ", ".join(f"{k}={getattr(row, k)}" for k in swept)
            if row.time_to_target_s is None:
                sys.stdout.write(f"{label}  {row.status}: {row.reason}\n")
            else:
                sys.stdout.write(
                    f"{label}  {row.time_to_target_s / 60:.1f} min  {row.round_time_s:.1f} s  "
                    f"{row.rounds_to_target:.1f}  {row.groups}  {row.depths}  {row.status} (gap {row.gap:.2%})\n"
                )
        return 0
