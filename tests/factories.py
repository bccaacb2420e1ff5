"""Factories shared by tests (import as ``from tests.factories import ...``).

The toy cost model's numbers follow the measured host figures for the default
6-layer model at batch 16 (about 0.25 s a step at depth 1 and 0.37 s at depth 6); planner
tests use it so they need no torch. Tests that need the real measured model build it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hierfedlora.planner.outcomes import Group, GroupRoundResult, Plan, RoundReport, Skew, SolveStatus
from hierfedlora.planner.types import CostModel, DeviceProfile


def make_cost_model(num_layers: int = 6) -> CostModel:
    """A cost model with the measured per-step figures, spread evenly over ``num_layers``."""
    return CostModel(
        model_name="toy-minilm",
        model_sha256="0" * 64,
        measured_on="test fixture",
        num_layers=num_layers,
        batch_size=16,
        seq_len=64,
        embedding_forward_s=0.0005,
        layer_forward_s=tuple([0.0132 / num_layers] * num_layers),
        layer_backward_s=tuple([0.0095 / num_layers * 6 / 6] * num_layers),
        head_step_s=0.0004,
        layer_optimizer_s=0.0005,
        adapter_bytes_per_layer=2 * 2 * 384 * 8 * 4,
        head_bytes=(384 * 26 + 26) * 4,
        activation_bytes_per_sample_per_layer=2_200_000,
        optimizer_bytes_per_layer=3 * 2 * 2 * 384 * 8 * 4,
        base_model_bytes=91_000_000,
    )


def make_devices(
    num_devices: int,
    num_classes: int = 4,
    *,
    seed: int = 0,
    alpha: float = 0.5,
    samples: int = 40,
    memory_bytes: int = 2**31,
) -> tuple[DeviceProfile, ...]:
    """Random non-IID devices (Dirichlet ``alpha`` label mixes, speeds 1..8x the host)."""
    rng = np.random.default_rng(seed)
    devices = []
    for idx in range(num_devices):
        mix = rng.dirichlet([alpha] * num_classes)
        counts = rng.multinomial(samples, mix)
        if counts.sum() == 0:
            counts[0] = 1
        devices.append(
            DeviceProfile(
                device_id=f"d{idx}",
                label_counts=tuple(int(c) for c in counts),
                compute_scale=float(rng.choice([1.0, 2.0, 4.0, 8.0])),
                memory_bytes=memory_bytes,
                uplink_mbps=float(rng.choice([5.0, 20.0, 100.0])),
                downlink_mbps=float(rng.choice([20.0, 50.0, 200.0])),
            )
        )
    return tuple(devices)


# The vocabulary of the tiny random decoder models built by tests/conftest.py.
WORDS = ("<unk>", "<eos>", "a", "dog", "is", "an", "animal", "cake", "food", "the", "of", "tree", "plant")


def make_texts(count: int) -> list[str]:
    """Texts of 1..8 words from the decoders' vocabulary, so rows are padded by different amounts."""
    words = WORDS[2:]
    return [" ".join(words[(i + k) % len(words)] for k in range(1 + i % 8)) for i in range(count)]


def make_round_report(
    plan: Plan, global_round: int, *, eval_loss: float = 1.0, device_step_s: Mapping[str, float] | None = None
) -> RoundReport:
    """A report of ``plan``'s round ``global_round`` at simulated second ``global_round``: one zero-traffic
    result per group, the given eval loss and step seconds, accuracy 0.5."""
    return RoundReport(
        plan_id=plan.plan_id,
        global_round=global_round,
        sim_time_s=float(global_round),
        wall_time_s=0.0,
        groups=tuple(
            GroupRoundResult(
                group_id=g.group_id, loss=1.0, accuracy=None, upload_bytes=0, download_bytes=0, sim_time_s=0
            )
            for g in plan.groups
        ),
        device_step_s=dict(device_step_s or {}),
        eval_loss=eval_loss,
        eval_accuracy=0.5,
    )


def make_two_group_plan(fleet, *, batch_size: int = 4) -> Plan:
    """A hand-made plan over the fleet's devices in two halves: depth 1 with 2 intra rounds, depth 2 with 1."""
    ids = [d.device_id for d in fleet.devices]
    half = len(ids) // 2
    skew = Skew(kl=0.0, l1=0.0, hellinger=0.0)
    groups = (
        Group(group_id=0, device_ids=tuple(ids[:half]), depth=1, intra_rounds=2, local_steps=2, label_skew=skew),
        Group(group_id=1, device_ids=tuple(ids[half:]), depth=2, intra_rounds=1, local_steps=2, label_skew=skew),
    )
    return Plan(
        groups=groups,
        predicted_round_time_s=1.0,
        predicted_rounds_to_target=3.0,
        objective_value=3.0,
        dual_bound=3.0,
        status=SolveStatus.OPTIMAL,
        solve_time_s=0.0,
        solver="hand",
        seed=0,
        batch_size=batch_size,
    )
