"""Helpers the run tests share: the tests' run options, a run's committed tensors, reports compared without their
wall-clock fields, the ``hierfedlora run`` command line over a plan, fleet and cost model file, and small adapted
models with padded rows."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from hierfedlora.models.catalog import ModelSpec, load_base_model
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.planner.outcomes import RoundReport
from hierfedlora.runtime.checkpoint import MANIFEST_NAME
from hierfedlora.runtime.data import TokenizedData, tokenize_texts
from hierfedlora.runtime.options import RunOptions
from tests.factories import make_texts

NUM_LABELS = {"minilm": 4, "gpt2": 3, "llama": 3}


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


def adapted_models(
    slice_dir: Path, make_decoder, kinds: tuple[str, ...], *, texts: int, seq_len: int, lora_dropout: float = 0.0
) -> dict[str, tuple[AdaptedModel, TokenizedData]]:
    """Per kind (``minilm``: the 2-layer slice of the default model; ``gpt2``, ``llama``: tiny decoders from
    ``make_decoder``), an :class:`AdaptedModel` with random adapters (seed 1, scale 0.2) and ``texts`` texts of
    1 to 8 words tokenized to ``seq_len``, so rows are padded by different amounts; labels cycle."""
    found = {}
    for kind in kinds:
        path = slice_dir if kind == "minilm" else make_decoder(kind)
        spec = ModelSpec(path=str(path), num_labels=NUM_LABELS[kind], lora_dropout=lora_dropout)
        base, tokenizer = load_base_model(spec, seed=0)
        model = AdaptedModel(base, spec, seed=0)
        generator = torch.Generator().manual_seed(1)
        params = model.trainable_parameters()
        model.set_adapter_state({key: torch.randn(p.shape, generator=generator) * 0.2 for key, p in params.items()})
        rows = make_texts(texts)
        found[kind] = (model, tokenize_texts(rows, [i % spec.num_labels for i in range(texts)], tokenizer, seq_len))
    return found
