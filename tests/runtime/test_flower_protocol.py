"""The Flower layer's pure parts: message codecs, run-config parsing, discovery's checks; its doc examples."""

from __future__ import annotations

import dataclasses
import doctest
import importlib

import pytest
import torch

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.runtime.local_training import DeviceUpdate
from tests.factories import make_cost_model

pytestmark = pytest.mark.flower

pytest.importorskip("flwr")


def _job(layers=None):
    from hierfedlora.runtime.flower.protocol import DeviceJob

    state = {"layers.1.query.lora_A": torch.randn(8, 4), "head.bias": torch.tensor([1e-38, -0.0, 3.5])}
    return DeviceJob(
        device_id="d3",
        group_index=1,
        depth=2,
        layers=layers,
        local_steps=3,
        batch_size=4,
        learning_rate=2e-3,
        optimizer="sgd",
        seed=2**62 + 5,
        global_round=4,
        intra_round=1,
        start_state=state,
    )


@pytest.mark.parametrize("layers", [None, (0, 1)])
def test_a_train_message_carries_the_job_bit_for_bit(layers):
    """Encoding then decoding a job gives the same fields and the same tensor bits (a 63-bit seed too)."""
    from hierfedlora.runtime.flower.protocol import decode_job, encode_job

    # Arrange
    job = _job(layers)
    # Act
    back = decode_job(encode_job(job))
    # Assert
    same = [f.name for f in dataclasses.fields(job) if f.name != "start_state"]
    assert all(getattr(back, name) == getattr(job, name) for name in same)
    assert back.start_state.keys() == job.start_state.keys()
    assert all(torch.equal(back.start_state[k], job.start_state[k]) for k in job.start_state)


def test_a_train_reply_carries_the_update_and_what_was_trained():
    """The reply's state, loss and step seconds come back with the depth, group and sample count trained."""
    from hierfedlora.runtime.flower.protocol import decode_update, encode_update

    # Arrange
    job = _job()
    update = DeviceUpdate(state=job.start_state, mean_loss=0.75, mean_step_s=0.125)
    # Act
    back, metrics = decode_update(encode_update(update, job, num_examples=12))
    # Assert
    assert (back.mean_loss, back.mean_step_s) == (0.75, 0.125)
    assert all(torch.equal(back.state[k], update.state[k]) for k in update.state)
    assert (metrics["lora-depth"], metrics["group"], metrics["num-examples"]) == (2, 1, 12)


def test_a_message_without_the_task_record_is_refused_by_name():
    """A train message someone else built names the record it lacks."""
    from flwr.app import RecordDict

    from hierfedlora.runtime.flower.protocol import decode_job

    with pytest.raises(InvalidInputError) as info:
        decode_job(RecordDict())
    assert [issue.path for issue in info.value.issues] == ["message.content['hierfedlora-task']"]


def test_run_config_reports_every_unknown_key_and_bad_value():
    """Unknown keys get a suggestion; three problems are reported at once."""
    from hierfedlora.runtime.flower.settings import AppSettings

    with pytest.raises(InvalidInputError) as info:
        AppSettings.from_run_config({"local-step": 3, "optimizer": "adam", "alpha": -1.0})
    issues = {issue.path: issue for issue in info.value.issues}
    assert set(issues) == {"local-step"}
    assert "local-steps" in issues["local-step"].hint
    with pytest.raises(InvalidInputError) as info:
        AppSettings.from_run_config({"optimizer": "adam", "alpha": -1.0, "rounds": 0})
    assert sorted(issue.path for issue in info.value.issues) == ["alpha", "optimizer", "rounds"]
    assert AppSettings.from_run_config({"alpha": 1}).alpha == 1.0  # a TOML integer for a float field


def _fleet():
    from hierfedlora.planner.fleet import make_fleet
    from hierfedlora.planner.fleets.datasets import LabelledTexts
    from hierfedlora.planner.types import DatasetSpec

    data = LabelledTexts(
        texts=("t",) * 24,
        labels=(0, 1, 2) * 8,
        class_names=("a", "b", "c"),
        spec=DatasetSpec(kind="csv", path="toy.csv", num_samples=24),
    )
    return make_fleet(data, num_devices=3, partition="iid", test_fraction=0.25, seed=1)


def _profile(device, **changes):
    from hierfedlora.runtime.flower.protocol import NodeProfile

    fields = {
        "device_id": device.device_id,
        "label_counts": device.label_counts,
        "memory_bytes": 2**30,
        "uplink_mbps": 5.0,
        "downlink_mbps": 9.0,
        "measured_step_s": 0.5,
    }
    return NodeProfile(**{**fields, **changes})


def test_discovery_keeps_the_answering_devices_with_their_profiles():
    """Two of three devices answer: the fleet keeps them, in fleet order, with the nodes' links and memory."""
    from hierfedlora.planner.costs import step_time_s
    from hierfedlora.runtime.flower.server import discovered_fleet

    # Arrange
    fleet, cost = _fleet(), make_cost_model(2)
    profiles = {7: _profile(fleet.devices[2], compute_scale=3.0), 5: _profile(fleet.devices[0])}
    # Act
    found = discovered_fleet(fleet, profiles, cost)
    # Assert
    host_step_s = step_time_s(cost, compute_scale=1.0, depth=2, batch_size=cost.batch_size)
    assert [d.device_id for d in found.devices] == ["d0", "d2"]
    assert found.sample_indices == (fleet.sample_indices[0], fleet.sample_indices[2])
    assert [d.compute_scale for d in found.devices] == [pytest.approx(0.5 / host_step_s), 3.0]
    assert {(d.uplink_mbps, d.downlink_mbps, d.memory_bytes) for d in found.devices} == {(5.0, 9.0, 2**30)}


def test_discovery_refuses_a_node_with_other_data_or_an_unknown_device():
    """A node whose label counts differ from its device's, and one naming no device, are both reported."""
    from hierfedlora.runtime.flower.server import discovered_fleet

    fleet = _fleet()
    profiles = {1: _profile(fleet.devices[0], label_counts=(9, 9, 9)), 2: _profile(fleet.devices[1], device_id="x")}
    with pytest.raises(InvalidInputError) as info:
        discovered_fleet(fleet, profiles, make_cost_model(2))
    assert [issue.path for issue in info.value.issues] == ["node 1.label_counts", "node 2.device_id"]


@pytest.mark.parametrize(
    "module_name",
    ["hierfedlora.runtime.flower.settings", "hierfedlora.runtime.flower.node", "hierfedlora.runtime.flower.server"],
)
def test_flower_docstring_examples_run(module_name):
    """doctest.testmod finds no failure in the module."""
    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_a_train_message_carries_the_rules_base_delta_and_frozen_a_bit_for_bit():
    """A FedEx-LoRA job's base delta, rule and train-lora-a come back exactly; FedAvg jobs carry no delta record."""
    from hierfedlora.runtime.flower.protocol import BASE_DELTA_RECORD, decode_job, encode_job

    # Arrange
    delta = {"layers.1.query": torch.randn(4, 4, dtype=torch.float64) * 1e-30, "layers.1.value": torch.zeros(3, 2)}
    job = dataclasses.replace(_job(), aggregation="fedex", base_delta=delta, train_lora_a=False)
    # Act
    content = encode_job(job)
    back = decode_job(content)
    plain = encode_job(_job())
    # Assert
    assert (back.aggregation, back.train_lora_a) == ("fedex", False)
    assert back.base_delta.keys() == delta.keys()
    assert all(torch.equal(back.base_delta[k], delta[k]) and back.base_delta[k].dtype == delta[k].dtype for k in delta)
    assert BASE_DELTA_RECORD in content and BASE_DELTA_RECORD not in plain


def test_a_train_message_without_the_rules_fields_reads_as_fedavg():
    """A message made before the rule's fields existed decodes as a FedAvg job: A trained, no base delta."""
    from flwr.app import ConfigRecord

    from hierfedlora.runtime.flower.protocol import TASK_RECORD, decode_job, encode_job

    # Arrange
    content = encode_job(_job())
    config = dict(content[TASK_RECORD])
    del config["aggregation"], config["train-lora-a"]
    content[TASK_RECORD] = ConfigRecord(config)
    # Act
    back = decode_job(content)
    # Assert
    assert (back.aggregation, back.train_lora_a, back.base_delta) == ("fedavg", True, {})


def test_a_train_message_with_a_bad_rule_or_a_stray_base_delta_is_refused_by_name():
    """An unknown rule, a non-bool train-lora-a and a base delta under FedAvg are each named."""
    from flwr.app import ConfigRecord

    from hierfedlora.runtime.flower.protocol import BASE_DELTA_RECORD, TASK_RECORD, decode_job, encode_job

    # Arrange
    unknown = encode_job(_job())
    unknown[TASK_RECORD] = ConfigRecord({**dict(unknown[TASK_RECORD]), "aggregation": "fedprox", "train-lora-a": 1})
    stray = encode_job(
        dataclasses.replace(_job(), aggregation="fedex", base_delta={"layers.1.query": torch.ones(2, 2)})
    )
    stray[TASK_RECORD] = ConfigRecord({**dict(stray[TASK_RECORD]), "aggregation": "fedavg"})
    # Act
    with pytest.raises(InvalidInputError) as bad_rule:
        decode_job(unknown)
    with pytest.raises(InvalidInputError) as bad_delta:
        decode_job(stray)
    # Assert
    assert [i.path for i in bad_rule.value.issues] == [
        f"{TASK_RECORD}['aggregation']",
        f"{TASK_RECORD}['train-lora-a']",
    ]
    assert "fedavg, ffa, fedex, flora, lora-fair, hetlora" in bad_rule.value.issues[0].expected
    assert [i.path for i in bad_delta.value.issues] == [f"message.content[{BASE_DELTA_RECORD!r}]"]


@pytest.mark.parametrize(
    ("key", "bad"), [("aggregation", "fedprox"), ("aggregation", "FedEx"), ("hetlora-prune-gamma", 1.0)]
)
def test_run_config_refuses_a_bad_rule_or_prune_gamma_naming_the_key(key, bad):
    """An unknown rule is refused naming ``aggregation`` and the six rules; gamma outside [0, 1) naming its key."""
    from hierfedlora.runtime.flower.settings import AppSettings

    # Act
    with pytest.raises(InvalidInputError) as info:
        AppSettings.from_run_config({key: bad})
    # Assert
    assert [issue.path for issue in info.value.issues] == [key.replace("-", "_")]
    assert f"run config: {key.replace('-', '_')}" in str(info.value)
    if key == "aggregation":
        assert "one of fedavg, ffa, fedex, flora, lora-fair, hetlora" in info.value.issues[0].expected


def test_the_run_rule_and_options_follow_the_run_config_as_the_cli_does():
    """The run config's rule wins over a FedAvg plan's; empty takes the plan's; another rule than a non-FedAvg
    plan's is refused naming ``aggregation``; the rule and gamma reach ``RunOptions``."""
    from hierfedlora.runtime.flower.server import run_options, run_rule
    from hierfedlora.runtime.flower.settings import AppSettings

    # Arrange
    from tests.factories import make_two_group_plan

    fleet = _fleet()
    fedavg_plan = make_two_group_plan(fleet)
    flora_plan = dataclasses.replace(fedavg_plan, aggregation="flora")
    settings = AppSettings.from_run_config({"aggregation": "hetlora", "hetlora-prune-gamma": 0})
    # Act
    rules = [run_rule(settings, fedavg_plan), run_rule(AppSettings(), flora_plan), run_rule(AppSettings(), None)]
    options = run_options(settings, rules[0])
    with pytest.raises(InvalidInputError) as info:
        run_rule(settings, flora_plan)
    # Assert
    assert rules == ["hetlora", "flora", "fedavg"]
    assert (options.aggregation, options.hetlora_prune_gamma) == ("hetlora", 0.0)
    assert [issue.path for issue in info.value.issues] == ["aggregation"] and "'flora'" in info.value.issues[0].expected


def test_the_strategy_refuses_a_plan_priced_under_another_rule():
    """``HierFedLoraStrategy`` averages with FedAvg only: a FLoRA plan is refused, not silently averaged."""
    from hierfedlora.runtime.flower.strategy import HierFedLoraStrategy
    from tests.factories import make_two_group_plan

    # Arrange
    plan = dataclasses.replace(make_two_group_plan(_fleet()), aggregation="flora")
    # Act
    with pytest.raises(InvalidInputError) as info:
        HierFedLoraStrategy(plan)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["plan.aggregation"]
