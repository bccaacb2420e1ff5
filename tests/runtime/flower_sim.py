"""Helpers the Flower simulation tests share: the App's run config for the six-device fleet, the seeded start
adapters, and one ``run_simulation`` over six virtual SuperNodes (Ray actors that Flower starts and stops)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hierfedlora.planner.outcomes import Plan

NUM_NODES = 6


def app_settings(plan: Plan, fleet_path: Path, model_dir: Path, *, rounds: int, seed: int, **extra) -> dict:
    """The run config both the ServerApp and the ClientApp read: 16 evaluation samples, the plan's batch size."""
    return {
        "rounds": rounds,
        "seed": seed,
        "model": str(model_dir),
        "fleet-file": str(fleet_path),
        "eval-samples": 16,
        "batch-size": plan.batch_size,
        "timeout-s": 600.0,  # a safety cap: discovery on a loaded 2-core host took over 120 s
        **extra,
    }


def initial_adapters(model_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    """The seeded adapters every run with ``seed`` starts from (``runtime.run_start``)."""
    from hierfedlora.models.adapters import initial_adapter_state
    from hierfedlora.models.catalog import ModelSpec
    from hierfedlora.models.lora import load_adapted_model

    model, _ = load_adapted_model(ModelSpec(path=str(model_dir), num_labels=3), seed=seed)
    return initial_adapter_state(model.peft_model, model.max_depth, seed)


def simulate(server_app, settings: dict) -> None:
    """Run ``server_app`` against :data:`NUM_NODES` virtual SuperNodes of the App's ClientApp, one CPU each."""
    from flwr.simulation import run_simulation

    from hierfedlora.runtime.flower import make_client_app

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2, "num_gpus": 0}}
    with pytest.MonkeyPatch.context() as env:
        # Ray's raylet renices its workers (the nodes) by 15 (max 19); they keep the test's priority instead
        env.setenv("RAY_worker_niceness", "0")
        env.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no accelerator here; silences Ray's FutureWarning
        run_simulation(server_app, make_client_app(defaults=settings), NUM_NODES, backend_config=backend)
