"""Sequential groups (FedGSP): device i trains from device i-1's state, and the clock sums the chain."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hierfedlora.models.adapters import initial_adapter_state
from hierfedlora.planner import costs
from hierfedlora.runtime.clock import global_round_time_s
from hierfedlora.runtime.engine import prepare_run
from hierfedlora.runtime.executors.inprocess import InProcessExecutor
from hierfedlora.runtime.group_training import _task, group_start_state, train_groups
from hierfedlora.runtime.local_training import derive_seed
from hierfedlora.runtime.options import RunOptions
from tests.factories import make_cost_model, make_devices, make_two_group_plan


def _chain_plan(fleet):
    plan = make_two_group_plan(fleet)
    first = dataclasses.replace(plan.groups[0], sequential=True, intra_rounds=1)
    return dataclasses.replace(plan, groups=(first, plan.groups[1]))


def test_a_sequential_group_chains_its_devices(small_fleet, minilm_slice_dir):
    """The group's state is its last device's, trained from the first device's output: a chain, not an average."""
    # Arrange
    fleet, _ = small_fleet
    plan = _chain_plan(fleet)
    options = RunOptions(rounds=1, model=str(minilm_slice_dir), eval_samples=16, eval_batch_size=16, seed=3)
    context = prepare_run(plan, fleet, options)
    executor = InProcessExecutor(context)
    start = initial_adapter_state(context.model.peft_model, context.model.max_depth, options.seed)
    samples = {d.device_id: d.num_samples for d in fleet.devices}
    # Act
    outcome = train_groups(executor, context, plan, start, options, 1, samples)
    parallel = dataclasses.replace(plan, groups=(dataclasses.replace(plan.groups[0], sequential=False), plan.groups[1]))
    averaged = train_groups(executor, context, parallel, start, options, 1, samples)
    # the chain by hand: device 0 from the group's start, device 1 from device 0's update, same seeds
    state = group_start_state(context, plan.groups[0], start)
    for position, device_id in enumerate(plan.groups[0].device_ids):
        task = _task(plan, 0, 0, [(position, device_id)], state, options, 1)
        assert task.seeds == (derive_seed(options.seed, 1, 0, 0, position),)
        (update,) = executor.train([task])[0]
        state = update.state
    # Assert
    assert len(plan.groups[0].device_ids) == 2
    assert outcome.states[0].keys() == state.keys()
    assert all(torch.equal(outcome.states[0][key], state[key]) for key in state)
    assert not all(torch.equal(averaged.states[0][key], state[key]) for key in state)  # FedAvg differs
    assert all(torch.equal(outcome.states[1][k], averaged.states[1][k]) for k in outcome.states[1])  # parallel group
    assert outcome.contributed == (True, True) and outcome.losses[0] is not None


def test_the_clock_sums_a_chain(six_device_fleet):
    """A sequential group's intra round is the sum of its devices' steps and exchanges, with or without faults."""
    # Arrange
    fleet, _ = six_device_fleet
    plan = _chain_plan(fleet)
    cost = make_cost_model(2)
    devices = [
        dataclasses.replace(d, device_id=f.device_id) for d, f in zip(make_devices(6), fleet.devices, strict=True)
    ]
    by_id = {d.device_id: d for d in devices}
    group = plan.groups[0]
    members = [by_id[d] for d in group.device_ids]
    common = {"backhaul_mbps": 50.0, "intra_latency_s": 0.05, "global_latency_s": 1.0}
    each = [
        group.local_steps * costs.step_time_s(cost, compute_scale=d.compute_scale, depth=group.depth, batch_size=4)
        + costs.exchange_time_s(
            cost, d, depth=group.depth, latency_s=0.05, num_bytes=costs.group_adapter_bytes(cost, group)
        )
        for d in members
    ]
    # Act
    chained = global_round_time_s(plan, cost, by_id, **common)
    faulty = global_round_time_s(plan, cost, by_id, offline=(group.device_ids[0],), deadline_quantile=0.5, **common)
    parallel = global_round_time_s(
        dataclasses.replace(plan, groups=(dataclasses.replace(group, sequential=False), plan.groups[1])),
        cost,
        by_id,
        **common,
    )
    # Assert
    assert chained.groups[0].intra_round_s == (pytest.approx(math.fsum(each), rel=1e-12),)
    assert parallel.groups[0].intra_round_s == (pytest.approx(max(each), rel=1e-12),)
    assert faulty.groups[0].intra_round_s == (pytest.approx(math.fsum(each[1:]), rel=1e-12),)
    assert faulty.groups[0].missed == ((),)  # a deadline never cuts a chain
    assert chained.groups[1] == parallel.groups[1]
