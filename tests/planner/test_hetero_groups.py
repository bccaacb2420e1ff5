"""Groups with explicit layers or a LoRA rank: field rules, plan checks, traffic, JSON and plan ids."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from hierfedlora.planner import costs
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import from_json, to_dict, to_json
from hierfedlora.planner.outcomes import GROUP_RULES, Group, Plan, Skew, SolveStatus
from hierfedlora.planner.plan import summarize_plan
from hierfedlora.planner.plan_checks import check_groups, check_plan_groups
from tests.factories import make_cost_model

SKEW = Skew(kl=0.0, l1=0.0, hellinger=0.0)


def _group(**overrides: object) -> Group:
    fields: dict[str, object] = dict(
        group_id=0, device_ids=("a",), depth=6, intra_rounds=1, local_steps=1, label_skew=SKEW
    )
    fields.update(overrides)
    return Group(**fields)  # type: ignore[arg-type]


def _plan(*groups: Group) -> Plan:
    return Plan(
        groups=groups,
        predicted_round_time_s=1.0,
        predicted_rounds_to_target=10.0,
        objective_value=10.0,
        dual_bound=10.0,
        status=SolveStatus.OPTIMAL,
        solve_time_s=0.0,
        solver="test",
        seed=0,
    )


@pytest.mark.parametrize("field", ["layers", "lora_rank"])
def test_bad_values_of_the_new_fields_are_refused_by_name(field):
    """Every bad value a rule lists is refused under the field's name."""
    for bad in GROUP_RULES[field].bad_values:
        # Act
        with pytest.raises(InvalidInputError) as info:
            _group(**{field: bad})
        # Assert
        assert [issue.path for issue in info.value.issues] == [field]


def test_plan_check_names_layers_out_of_range_inconsistent_depth_and_rank_beyond_full():
    """Three broken groups give three issues, each naming the field, the rule with its numbers, and the value."""
    # Arrange
    plan = _plan(
        _group(group_id=0, device_ids=("a",), layers=(3, 6), depth=3),
        _group(group_id=1, device_ids=("b",), layers=(1, 4), depth=6),
        _group(group_id=2, device_ids=("c",), lora_rank=9),
    )
    # Act
    issues = check_plan_groups(plan, num_layers=6, full_rank=8)
    # Assert
    assert [issue.path for issue in issues] == ["groups[0].layers", "groups[1].depth", "groups[2].lora_rank"]
    assert str(issues[0]) == "groups[0].layers must be layer indices in 0..5 (the model's layers); got (3, 6)"
    assert "num_layers - min(layers) = 6 - 1 = 5" in str(issues[1]) and str(issues[1]).endswith("got 6")
    assert str(issues[2]) == "groups[2].lora_rank must be an integer in 1..8 (the run's full LoRA rank); got 9"


def test_plan_check_accepts_consistent_groups_and_plain_ones():
    """Consistent layers, a rank within the full rank and plain groups pass; no full rank skips the rank rule."""
    # Arrange
    groups = (_group(layers=(2, 5), depth=4, lora_rank=4), _group(group_id=1, device_ids=("b",), depth=2))
    # Act / Assert
    assert check_groups(groups, num_layers=6, full_rank=8) == []
    assert check_groups((_group(lora_rank=64),), num_layers=6) == []


def test_group_adapter_bytes_count_what_travels():
    """Only the listed layers travel, at the group's share of the rank; plain groups keep the depth formula."""
    # Arrange
    cost = make_cost_model(6)  # lora_rank 8
    per_layer, head = cost.adapter_bytes_per_layer, cost.head_bytes
    # Act / Assert
    assert (
        costs.group_adapter_bytes(cost, _group(depth=4)) == costs.adapter_bytes(cost, depth=4) == 4 * per_layer + head
    )
    assert costs.group_adapter_bytes(cost, _group(depth=4, layers=(2, 5))) == 2 * per_layer + head
    assert costs.group_adapter_bytes(cost, _group(depth=6, lora_rank=2)) == round(6 * per_layer / 4) + head
    assert costs.group_adapter_bytes(cost, _group(depth=4, layers=(2, 5), lora_rank=4)) == per_layer + head


def test_json_round_trip_keeps_the_new_fields_and_old_files_load():
    """A plan with layers and ranks round-trips; a file written before the fields existed loads with them null."""
    # Arrange
    plan = _plan(_group(layers=(0, 3), lora_rank=2), _group(group_id=1, device_ids=("b",), depth=2))
    old = to_dict(_plan(_group(depth=2)))
    for group in old["groups"]:
        del group["layers"], group["lora_rank"]
    # Act
    back = from_json(Plan, to_json(plan))
    loaded = from_json(Plan, json.dumps(old))
    # Assert
    assert back == plan and back.plan_id == plan.plan_id
    assert loaded.groups[0].layers is None and loaded.groups[0].lora_rank is None


def test_plan_id_changes_with_the_new_fields_only_when_set():
    """Setting layers or a rank changes the id; leaving them null keeps the id the plan had before them."""
    # Arrange
    plain = _plan(_group(depth=3))
    legacy_content = {
        "groups": [[["a"], 3, 1, 1]],
        "model": "",
        "fleet": "",
        "batch_size": 16,
        "parent": None,
        "objective": 10.0,
    }

    legacy_id = hashlib.sha256(json.dumps(legacy_content, sort_keys=True).encode()).hexdigest()[:12]
    # Act
    ids = {
        plain.plan_id,
        _plan(_group(depth=3, layers=(3, 5))).plan_id,
        _plan(_group(depth=3, layers=(3, 4))).plan_id,
        _plan(_group(depth=3, lora_rank=4)).plan_id,
    }
    # Assert
    assert plain.plan_id == legacy_id
    assert len(ids) == 4


def test_summary_shows_layers_and_rank_only_when_a_group_sets_them():
    """The plan table grows layers and rank columns for heterogeneous groups, and only then."""
    # Arrange
    mixed = _plan(_group(layers=(1, 4), depth=5), _group(group_id=1, device_ids=("b",), lora_rank=2))
    # Act
    plain_text, mixed_text = summarize_plan(_plan(_group())), summarize_plan(mixed)
    # Assert
    assert "layers" not in plain_text
    assert "layers  rank" in mixed_text
    assert mixed_text.splitlines()[-2].split()[-2:] == ["1,4", "full"]
    assert mixed_text.splitlines()[-1].split()[-2:] == ["top", "2"]


def test_trained_layers_counts_the_listed_layers_or_the_depth():
    """trained_layers is len(layers) when set, else depth."""
    assert _group(depth=5, layers=(1, 4)).trained_layers == 2
    assert dataclasses.replace(_group(depth=5), lora_rank=3).trained_layers == 5
