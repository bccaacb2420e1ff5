"""Faults under every aggregation rule: poisoned updates are screened out and the run goes on, priced per rule."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from hierfedlora.models.adapters import initial_adapter_state
from hierfedlora.planner.costs import AGGREGATION_RULES
from hierfedlora.runtime.checkpoint import MANIFEST_NAME
from hierfedlora.runtime.clock import global_round_time_s
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.faults import FaultOptions, draw_round_faults
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.run_start import GLOBAL_PREFIX
from tests.factories import make_cost_model, make_devices, make_two_group_plan

DENSE_BYTES = 50_000  # FedEx-LoRA's dense residual of one layer (any positive size)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_poisoned_updates_are_screened_under_every_rule(tmp_path, six_device_fleet, minilm_slice_dir, rule):
    """With poison as the only fault, every non-finite update is refused, by name, and the rule merges the rest."""
    # Arrange: seed 3 poisons d0 and d2 in round 1; non-finite kinds only, so the refusals are known exactly
    fleet, _ = six_device_fleet
    plan, faults = make_two_group_plan(fleet), FaultOptions(poison_frac=0.4, poison_kinds=("nan", "inf"))
    options = RunOptions(
        rounds=1, model=str(minilm_slice_dir), eval_samples=16, eval_batch_size=16, seed=3, aggregation=rule
    )
    context = prepare_run(plan, fleet, options)
    drawn = draw_round_faults(faults, tuple(d.device_id for d in fleet.devices), seed=3, global_round=1)
    # Act
    (report,) = run_plan(plan, fleet, make_cost_model(2), options, tmp_path / "run", context=context, faults=faults)
    # Assert
    assert drawn.poisoned and report.rejected_device_ids == tuple(sorted(drawn.poisoned))
    assert report.aggregation == rule and report.dropped_device_ids == ()
    manifest = json.loads((tmp_path / "run" / MANIFEST_NAME).read_text())
    tensors = load_file(tmp_path / "run" / manifest["tensor_file"])
    assert all(bool(torch.isfinite(value).all()) for value in tensors.values())
    if rule == "ffa":  # the poisoned devices' A never reached the merge: A is still the seeded initial one
        start = initial_adapter_state(context.model.peft_model, context.model.max_depth, options.seed)
        a_keys = [k for k in tensors if k.endswith("lora_A")]
        assert a_keys and all(torch.equal(tensors[k], start[k.removeprefix(GLOBAL_PREFIX)]) for k in a_keys)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_a_round_with_faults_is_priced_by_its_rule(six_device_fleet, rule):
    """The fault path of the clock with nobody offline or late moves the bytes and takes the time of the plain path."""
    # Arrange
    fleet, _ = six_device_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    devices = {
        f.device_id: dataclasses.replace(d, device_id=f.device_id)
        for d, f in zip(make_devices(6), fleet.devices, strict=True)
    }
    common = {
        "backhaul_mbps": 50.0,
        "intra_latency_s": 0.05,
        "global_latency_s": 1.0,
        "aggregation": rule,
        "dense_bytes_per_layer": DENSE_BYTES,
    }
    # Act
    plain = global_round_time_s(plan, cost, devices, **common)
    fault_path = global_round_time_s(plan, cost, devices, deadline_quantile=1.0, **common)
    fedavg = global_round_time_s(plan, cost, devices, deadline_quantile=1.0, **{**common, "aggregation": "fedavg"})
    # Assert
    assert [(g.upload_bytes, g.download_bytes) for g in fault_path.groups] == [
        (g.upload_bytes, g.download_bytes) for g in plain.groups
    ]
    assert fault_path.round_s == pytest.approx(plain.round_s, rel=1e-12)
    assert fault_path.global_aggregation_s == pytest.approx(plain.global_aggregation_s, rel=1e-12)
    assert all(g.missed == ((),) * p.intra_rounds for g, p in zip(plain.groups, plan.groups, strict=True))
    if rule == "ffa":
        assert fault_path.upload_bytes < fedavg.upload_bytes
    elif rule in ("fedex", "flora"):
        assert fault_path.download_bytes > fedavg.download_bytes
    else:
        assert fault_path.download_bytes == fedavg.download_bytes
