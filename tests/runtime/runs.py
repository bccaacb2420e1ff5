"""Helpers the run tests share: the tests' run options, a run's committed tensors, reports compared without their
wall-clock fields, and the ``hierfedlora run`` command line over a plan, fleet and cost model file."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from hierfedlora.planner.outcomes import RoundReport
from hierfedlora.runtime.checkpoint import MANIFEST_NAME
from hierfedlora.runtime.options import RunOptions


def run_options(model_dir: str | Path, rounds: int, **overrides) -> RunOptions:
    """``rounds`` rounds on ``model_dir``, evaluated on 16 held-out samples in one batch, seed 3."""
    return RunOptions(rounds=rounds, model=str(model_dir), eval_samples=16, eval_batch_size=16, seed=3, **overrides)


def committed_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of the run folder's last committed checkpoint (the file its manifest names)."""
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    return load_file(run_dir / manifest["tensor_file"])


def comparable(report: RoundReport) -> dict:
    """A report as a dict without what the wall clock decides (``wall_time_s``, ``measured_step_s``)."""
    data = dataclasses.asdict(report)
    data.pop("wall_time_s")
    data.pop("measured_step_s")
    return data


def cli_run_args(plan_path, fleet_path, cost_path, model_dir, out, rounds, *extra: str, resume=False) -> list[str]:
    """``hierfedlora run`` as a subprocess command, with :func:`run_options`' evaluation and seed."""
    args = [
        sys.executable,
        "-m",
        "hierfedlora.cli",
        "run",
        str(plan_path),
        "--fleet",
        str(fleet_path),
        "--cost-model",
        str(cost_path),
        "--rounds",
        str(rounds),
        "--out",
        str(out),
        "--model",
        str(model_dir),
        "--eval-samples",
        "16",
        "--seed",
        "3",
        "--allow-cost-mismatch",  # the hand plan's batch of 4 is not the cost model's 16
        *extra,
    ]
    return args + (["--resume"] if resume else [])
