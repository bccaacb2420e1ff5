"""Traffic per aggregation rule (planner.costs (C9)) in the simulated clock: bytes each way and the round time."""

from __future__ import annotations

import pytest

from hierfedlora.planner import costs
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.rule_costs import rule_bytes
from hierfedlora.runtime.clock import global_round_time_s
from tests.runtime.test_clock import LINKS, hand_made_plan

DENSE = 600_000


@pytest.fixture
def timed(cost_model, tiny_fleet):
    devices = {d.device_id: d for d in tiny_fleet}
    plan = hand_made_plan(cost_model, devices, [(("d0", "d1", "d4"), 2, 2, 3), (("d2", "d3"), 3, 1, 3)])

    def timing(rule: str):
        return global_round_time_s(plan, cost_model, devices, aggregation=rule, dense_bytes_per_layer=DENSE, **LINKS)

    return plan, timing


def test_rule_traffic_each_way_follows_c9(cost_model, timed):
    plan, timing = timed
    base = timing("fedavg")
    for rule in ("lora-fair", "hetlora"):
        assert timing(rule) == base
    ffa, fedex, flora = timing("ffa"), timing("fedex"), timing("flora")
    for group, b, f, x, fl in zip(plan.groups, base.groups, ffa.groups, fedex.groups, flora.groups, strict=True):
        size = costs.group_adapter_bytes(cost_model, group)
        lora = size - cost_model.head_bytes
        exchanges = group.intra_rounds * len(group.device_ids)
        assert b.upload_bytes == b.download_bytes == exchanges * size
        assert f.upload_bytes == f.download_bytes == exchanges * (round(lora / 2) + cost_model.head_bytes)
        assert x.upload_bytes == b.upload_bytes
        assert x.download_bytes == exchanges * (size + group.depth * DENSE)
        assert fl.download_bytes == exchanges * (len(group.device_ids) * lora + cost_model.head_bytes)
    # time follows bytes: halving is faster, a residual or a stack slower
    assert ffa.round_s < base.round_s < min(fedex.round_s, flora.round_s)
    assert flora.global_aggregation_s > base.global_aggregation_s


def test_fedex_needs_the_dense_size_and_unknown_rules_are_named(cost_model):
    with pytest.raises(InvalidInputError, match="dense_bytes_per_layer"):
        rule_bytes(cost_model, 100, aggregation="fedex")
    with pytest.raises(InvalidInputError, match="aggregation must be one of"):
        rule_bytes(cost_model, 100, aggregation="fedprox")


def test_planner_rule_names_match_the_runtime_rules():
    from hierfedlora.runtime.aggregation_rules import RULE_NAMES

    assert costs.AGGREGATION_RULES == RULE_NAMES
