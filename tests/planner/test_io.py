"""JSON round-trips for every contract type; bad files report every problem with its path."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfedlora.planner.errors import InvalidInputError, StorageError
from hierfedlora.planner.io import atomic_write_text, from_dict, from_json, read_json, to_dict, to_json, write_json
from hierfedlora.planner.outcomes import Group, GroupRoundResult, Limit, Plan, RoundReport, Skew, SolveStatus
from hierfedlora.planner.types import CostModel, DeviceProfile, Fleet, PlanningProblem
from tests.factories import make_cost_model

finite = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
device_ids = st.text(alphabet="abcdefgh0123456789_-", min_size=1, max_size=8)

devices = st.builds(
    DeviceProfile,
    device_id=device_ids,
    label_counts=st.lists(st.integers(0, 50), min_size=1, max_size=6).filter(lambda c: sum(c) > 0).map(tuple),
    compute_scale=finite,
    memory_bytes=st.integers(1, 2**40),
    uplink_mbps=finite,
    downlink_mbps=finite,
    tier=st.none() | st.sampled_from(["tx2", "phone"]),
    availability=st.none() | st.just(((0.0, 10.0), (20.0, 30.5))),
)
skews = st.builds(Skew, kl=non_negative, l1=non_negative, hellinger=non_negative)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    ids = draw(st.lists(device_ids, min_size=1, max_size=8, unique=True))
    cut = draw(st.integers(1, len(ids)))
    parts = [tuple(ids[:cut]), tuple(ids[cut:])] if cut < len(ids) else [tuple(ids)]
    groups = tuple(
        Group(
            group_id=k,
            device_ids=p,
            depth=draw(st.integers(1, 6)),
            intra_rounds=draw(st.integers(1, 8)),
            local_steps=draw(st.integers(1, 9)),
            label_skew=draw(skews),
            predicted_intra_round_s=draw(non_negative),
        )
        for k, p in enumerate(parts)
    )
    status = draw(st.sampled_from([SolveStatus.OPTIMAL, SolveStatus.FEASIBLE]))
    objective = draw(finite)
    return Plan(
        groups=groups,
        predicted_round_time_s=draw(non_negative),
        predicted_rounds_to_target=draw(finite),
        objective_value=objective,
        dual_bound=draw(non_negative),
        status=status,
        limit=None if status is SolveStatus.OPTIMAL else Limit.TIME,
        solve_time_s=draw(non_negative),
        solver="cpsat+highs",
        seed=draw(st.integers(0, 99)),
        parent_plan_id=draw(st.none() | st.just("abc")),
    )


reports = st.builds(
    RoundReport,
    plan_id=st.just("p1"),
    global_round=st.integers(1, 100),
    sim_time_s=non_negative,
    wall_time_s=non_negative,
    groups=st.lists(
        st.builds(
            GroupRoundResult,
            group_id=st.integers(0, 5),
            loss=non_negative,
            accuracy=st.floats(0, 1),
            upload_bytes=st.integers(0, 10**9),
            download_bytes=st.integers(0, 10**9),
            sim_time_s=non_negative,
        ),
        max_size=3,
    ).map(tuple),
    measured_step_s=st.dictionaries(device_ids, non_negative, max_size=3),
    eval_loss=non_negative,
    eval_accuracy=st.floats(0, 1),
    dropped_device_ids=st.lists(device_ids, max_size=2).map(tuple),
)


@given(devices)
def test_device_round_trips(device):
    """from_json(to_json(device)) == device."""
    assert from_json(DeviceProfile, to_json(device)) == device


@given(plans())
def test_plan_round_trips(plan):
    """from_json(to_json(plan)) == plan, and the id survives."""
    back = from_json(Plan, to_json(plan))
    assert back == plan
    assert back.plan_id == plan.plan_id


@given(reports)
def test_report_round_trips(report):
    """RoundReports survive a JSON line."""
    assert from_json(RoundReport, to_json(report, indent=None)) == report


@settings(max_examples=20)
@given(st.lists(devices, min_size=1, max_size=4))
def test_problem_round_trips(device_list):
    """A whole planning problem, nested types included, round-trips."""
    problem = PlanningProblem(devices=tuple(device_list), cost_model=make_cost_model(), depth_choices=(1, 3))
    assert from_json(PlanningProblem, to_json(problem)) == problem


def test_cost_model_and_fleet_round_trip(cost_model, tiny_fleet):
    """Cost models and fleets round-trip too."""
    fleet = Fleet(devices=tiny_fleet, class_names=("a", "b", "c", "d"))
    assert from_json(CostModel, to_json(cost_model)) == cost_model
    assert from_json(Fleet, to_json(fleet)) == fleet


def test_bad_fleet_reports_every_issue_with_paths(tiny_fleet):
    """Unknown keys (with a hint), missing keys and broken rules all show, with paths, in one error."""
    # Arrange
    data = to_dict(Fleet(devices=tiny_fleet, class_names=("a", "b", "c", "d")))
    data["devices"][3]["uplink_mbps"] = float("nan")
    data["devices"][5]["compute_scal"] = 2.0
    del data["devices"][6]["memory_bytes"]
    # Act
    with pytest.raises(InvalidInputError) as info:
        from_dict(Fleet, data, source="fleet.json")
    # Assert
    lines = str(info.value).splitlines()
    assert "fleet.json: devices[3].uplink_mbps must be a finite number > 0; got nan" in lines
    assert (
        "fleet.json: devices[5].compute_scal must be a known field of DeviceProfile; got 'compute_scal' "
        "(did you mean 'compute_scale'?)"
    ) in lines
    assert "fleet.json: devices[6].memory_bytes must be present (a required field); got 'missing'" in lines
    assert len(lines) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"devices": [', "valid JSON"),
        ("[]", "an object (Fleet)"),
        ('{"devices": 3, "class_names": ["a"]}', "a list of DeviceProfile objects"),
    ],
)
def test_malformed_files_are_invalid_input(tmp_path, text, expected):
    """Truncated JSON or the wrong shape is an InvalidInputError naming the file."""
    path = tmp_path / "fleet.json"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as info:
        read_json(Fleet, path)
    assert str(info.value).startswith("fleet.json: ")
    assert expected in str(info.value)


def test_missing_file_is_invalid_input(tmp_path):
    """A path that does not exist is reported, not a traceback."""
    with pytest.raises(InvalidInputError) as info:
        read_json(Fleet, tmp_path / "nope.json")
    assert "must be an existing file" in str(info.value)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    """A failed write leaves the previous file whole and no temporary file behind; the error names the file."""
    # Arrange
    path = tmp_path / "plan.json"
    write_json(path, {"v": 1})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    # Act
    with pytest.raises(StorageError) as caught:
        atomic_write_text(path, json.dumps({"v": 2}))
    # Assert
    assert str(caught.value) == f"cannot write {path}: disk gone"
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
