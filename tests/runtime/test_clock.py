"""The simulated clock agrees with the planner's cost formulas, adds seeded noise, and counts bytes."""

from __future__ import annotations

import dataclasses
import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfedlora.planner import costs
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.outcomes import Group, Plan, Skew, SolveStatus
from hierfedlora.planner.types import CostModel, DeviceProfile
from hierfedlora.runtime import clock
from hierfedlora.runtime.clock import SimClock, global_round_time_s
from tests.factories import make_cost_model, make_devices

LINKS = {"backhaul_mbps": 20.0, "intra_latency_s": 0.05, "global_latency_s": 1.0}
NO_SKEW = Skew(kl=0.0, l1=0.0, hellinger=0.0)


def hand_made_plan(
    cost_model: CostModel,
    devices: dict[str, DeviceProfile],
    layout: list[tuple[tuple[str, ...], int, int, int]],
    batch_size: int = 16,
) -> Plan:
    """A plan built by hand, its predictions computed with planner.costs (C5)-(C7) as the planner does.

    ``layout`` holds (device ids, depth, intra rounds, local steps) per group.
    """
    intra = [
        costs.intra_round_time_s(
            cost_model,
            [devices[d] for d in ids],
            depth=depth,
            local_steps=steps,
            batch_size=batch_size,
            latency_s=LINKS["intra_latency_s"],
        )
        for ids, depth, _, steps in layout
    ]
    global_s = costs.global_aggregation_s(
        cost_model,
        [depth for _, depth, _, _ in layout],
        backhaul_mbps=LINKS["backhaul_mbps"],
        latency_s=LINKS["global_latency_s"],
    )
    predicted = costs.round_time_s(intra, [tau for _, _, tau, _ in layout], global_s)
    groups = tuple(
        Group(
            group_id=k,
            device_ids=ids,
            depth=depth,
            intra_rounds=tau,
            local_steps=steps,
            label_skew=NO_SKEW,
            predicted_intra_round_s=t,
        )
        for k, ((ids, depth, tau, steps), t) in enumerate(zip(layout, intra, strict=True))
    )
    return Plan(
        groups=groups,
        predicted_round_time_s=predicted,
        predicted_rounds_to_target=10.0,
        objective_value=10 * predicted,
        dual_bound=10 * predicted,
        status=SolveStatus.OPTIMAL,
        solve_time_s=0.0,
        solver="by hand",
        seed=0,
        batch_size=batch_size,
    )


@pytest.fixture
def fleet_plan(cost_model, tiny_fleet) -> tuple[Plan, dict[str, DeviceProfile]]:
    devices = {d.device_id: d for d in tiny_fleet}
    layout = [(("d0", "d1", "d4"), 2, 4, 5), (("d2", "d3"), 6, 1, 3), (("d5", "d6", "d7"), 1, 8, 2)]
    return hand_made_plan(cost_model, devices, layout), devices


def test_noise_free_clock_equals_the_planners_prediction(cost_model, fleet_plan):
    """With noise 0 the round time, and every group's intra-round time, equal the plan's, exactly."""
    # Arrange
    plan, devices = fleet_plan
    # Act
    timing = global_round_time_s(plan, cost_model, devices, **LINKS)
    # Assert
    assert timing.round_s == plan.predicted_round_time_s
    for group, group_timing in zip(plan.groups, timing.groups, strict=True):
        assert group_timing.intra_round_s == (group.predicted_intra_round_s,) * group.intra_rounds
        assert group_timing.group_s == group.predicted_intra_round_s * group.intra_rounds


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 10_000),
    st.lists(st.tuples(st.integers(1, 6), st.sampled_from([1, 2, 4, 8]), st.integers(1, 6)), min_size=1, max_size=4),
)
def test_noise_free_clock_equals_prediction_for_random_plans(seed, group_choices):
    """For random devices, depths, intra rounds and local steps the clock is the prediction, bit for bit."""
    # Arrange
    cost_model = make_cost_model()
    fleet = make_devices(3 * len(group_choices), seed=seed)
    devices = {d.device_id: d for d in fleet}
    layout = [
        (tuple(d.device_id for d in fleet[3 * k : 3 * k + 3]), depth, tau, steps)
        for k, (depth, tau, steps) in enumerate(group_choices)
    ]
    plan = hand_made_plan(cost_model, devices, layout)
    # Act
    timing = global_round_time_s(plan, cost_model, devices, **LINKS)
    # Assert
    assert timing.round_s == plan.predicted_round_time_s


def test_round_time_known_answer_by_hand():
    """One device at scale 2, depth 1, 2 local steps, tau 3 on the costs doctest's toy model.

    step      = 2 * 4 * (0.02 + 0.02)            = 0.32 s      (2 forwards of 0.01, one LoRA backward 0.02)
    exchange  = 2 * 8 * 1000 / 8e6 + 0.05         = 0.052 s
    t         = 2 * 0.32 + 0.052                  = 0.692 s;    group = 3 * 0.692 = 2.076 s
    global    = 2 * 8 * 1000 / 1e6 + 1.0          = 1.016 s;    round = 3.092 s
    bytes     = 3 intra rounds * 1 device * 1000  = 3000 each way
    """
    # Arrange
    toy = CostModel(
        model_name="toy",
        num_layers=2,
        batch_size=4,
        seq_len=8,
        embedding_forward_s=0.0,
        layer_forward_s=(0.01, 0.01),
        layer_backward_s=(0.02, 0.02),
        head_step_s=0.0,
        layer_optimizer_s=0.0,
        adapter_bytes_per_layer=1000,
        head_bytes=0,
        activation_bytes_per_sample_per_layer=10,
        optimizer_bytes_per_layer=2000,
        base_model_bytes=100,
    )
    device = DeviceProfile(
        device_id="a", label_counts=(1,), compute_scale=2.0, memory_bytes=10**9, uplink_mbps=8.0, downlink_mbps=8.0
    )
    group = Group(group_id=0, device_ids=("a",), depth=1, intra_rounds=3, local_steps=2, label_skew=NO_SKEW)
    plan = Plan(
        groups=(group,),
        predicted_round_time_s=3.092,
        predicted_rounds_to_target=1.0,
        objective_value=1.0,
        dual_bound=1.0,
        status=SolveStatus.OPTIMAL,
        solve_time_s=0.0,
        solver="by hand",
        seed=0,
        batch_size=4,
    )
    # Act
    timing = global_round_time_s(
        plan, toy, {"a": device}, backhaul_mbps=1.0, intra_latency_s=0.05, global_latency_s=1.0
    )
    # Assert
    assert timing.groups[0].intra_round_s == pytest.approx((0.692,) * 3)
    assert timing.global_aggregation_s == pytest.approx(1.016)
    assert timing.round_s == pytest.approx(3.092)
    assert (timing.upload_bytes, timing.download_bytes) == (3000, 3000)


def test_bytes_per_group_match_the_traffic_formula(cost_model, fleet_plan):
    """Upload and download per group are tau * devices * adapter bytes; together they are (C8)."""
    # Arrange
    plan, devices = fleet_plan
    # Act
    timing = global_round_time_s(plan, cost_model, devices, **LINKS)
    # Assert
    for group, group_timing in zip(plan.groups, timing.groups, strict=True):
        one_way = group.intra_rounds * len(group.device_ids) * costs.adapter_bytes(cost_model, depth=group.depth)
        assert group_timing.upload_bytes == group_timing.download_bytes == one_way
        traffic = costs.group_traffic_bytes(
            cost_model, num_devices=len(group.device_ids), depth=group.depth, intra_rounds=group.intra_rounds
        )
        assert group_timing.upload_bytes + group_timing.download_bytes == traffic


def test_noisy_clock_is_reproducible_for_a_seed(cost_model, fleet_plan):
    """The same seed gives the same noisy round; another seed another; each intra round is drawn anew."""
    # Arrange
    plan, devices = fleet_plan

    def run(seed: int):
        return global_round_time_s(plan, cost_model, devices, **LINKS, noise=0.3, rng=np.random.default_rng(seed))

    # Act
    first, again, other = run(7), run(7), run(8)
    # Assert
    assert first == again
    assert first.round_s != other.round_s
    assert len(set(first.groups[2].intra_round_s)) == plan.groups[2].intra_rounds
    assert first.round_s == max(g.group_s for g in first.groups) + first.global_aggregation_s
    assert first.upload_bytes == global_round_time_s(plan, cost_model, devices, **LINKS).upload_bytes


def test_noise_has_mean_one_per_step(cost_model, tiny_fleet):
    """For one device the noisy group time averages to the noise-free one (the factor has mean one)."""
    # Arrange
    devices = {"d0": tiny_fleet[0]}
    plan = hand_made_plan(cost_model, devices, [(("d0",), 3, 4, 5)])
    rng = np.random.default_rng(0)
    # Act
    draws = [global_round_time_s(plan, cost_model, devices, **LINKS, noise=0.5, rng=rng).round_s for _ in range(2000)]
    # Assert
    assert np.mean(draws) == pytest.approx(plan.predicted_round_time_s, rel=0.02)


def test_bad_arguments_are_reported_together(cost_model, fleet_plan):
    """A missing device profile, a NaN backhaul, noise without a generator and a too-deep group: four issues."""
    # Arrange
    plan, devices = fleet_plan
    del devices["d6"]
    deep = dataclasses.replace(plan.groups[1], depth=7)
    plan = dataclasses.replace(plan, groups=(plan.groups[0], deep, plan.groups[2]))
    # Act
    with pytest.raises(InvalidInputError) as info:
        global_round_time_s(
            plan, cost_model, devices, backhaul_mbps=math.nan, intra_latency_s=0.0, global_latency_s=0.0, noise=0.1
        )
    # Assert
    assert [i.path for i in info.value.issues] == ["backhaul_mbps", "rng", "devices_by_id", "plan.groups[1].depth"]
    assert "'d6'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("noise", -0.1),
        ("noise", math.inf),
        ("batch_size", 0),
        ("intra_latency_s", -1.0),
        ("global_latency_s", math.nan),
    ],
)
def test_each_bad_number_is_named(cost_model, fleet_plan, name, bad):
    """Every numeric argument is checked against its rule, NaN and infinity included."""
    # Arrange
    plan, devices = fleet_plan
    arguments = {**LINKS, name: bad}
    # Act
    with pytest.raises(InvalidInputError) as info:
        global_round_time_s(plan, cost_model, devices, **arguments)
    # Assert
    assert [i.path for i in info.value.issues] == [name]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_sim_clock_refuses_to_run_backwards_or_to_nan(bad):
    """The clock only moves forward by finite amounts and never starts at a bad time."""
    # Act
    with pytest.raises(InvalidInputError) as advance_info:
        SimClock(1.0).advance(bad)
    with pytest.raises(InvalidInputError) as start_info:
        SimClock(bad)
    # Assert
    assert advance_info.value.issues[0].path == "seconds"
    assert start_info.value.issues[0].path == "now_s"


def test_sim_clock_advances_by_round_times(cost_model, fleet_plan):
    """Advancing by three noise-free rounds puts the clock at three predicted round times."""
    # Arrange
    plan, devices = fleet_plan
    timing = global_round_time_s(plan, cost_model, devices, **LINKS)
    # Act
    now = SimClock().advance(timing.round_s).advance(timing.round_s).advance(timing.round_s)
    # Assert
    assert now.now_s == pytest.approx(3 * plan.predicted_round_time_s)


def test_docstring_examples_run():
    """The module's doctests pass."""
    # Act
    result = doctest.testmod(clock, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    # Assert
    assert result.failed == 0 and result.attempted > 0
