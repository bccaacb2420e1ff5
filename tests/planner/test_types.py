"""Contract types check every field against its declared rule, and report all issues at once."""

from __future__ import annotations

import dataclasses
import math

import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.outcomes import Group, Limit, Plan, Skew, SolveStatus
from hierfedlora.planner.types import (
    COST_MODEL_RULES,
    DEVICE_RULES,
    PROBLEM_LIMITS,
    PROBLEM_RULES,
    SOLVER_RULES,
    PlanningProblem,
    SolverOptions,
)

DEVICE_CASES = [(field, bad) for field, rule in DEVICE_RULES.items() for bad in rule.bad_values]
COST_CASES = [(field, bad) for field, rule in COST_MODEL_RULES.items() for bad in rule.bad_values]
SOLVER_CASES = [(field, bad) for field, rule in SOLVER_RULES.items() for bad in rule.bad_values]
PROBLEM_CASES = [(field, bad) for field, rule in PROBLEM_RULES.items() for bad in rule.bad_values]


@pytest.mark.parametrize(("field", "bad"), DEVICE_CASES)
def test_device_reports_each_broken_field(tiny_fleet, field, bad):
    """A bad value is reported under its field's path, whatever the value."""
    # Arrange
    device = tiny_fleet[3]
    # Act
    with pytest.raises(InvalidInputError) as info:
        dataclasses.replace(device, **{field: bad})
    # Assert
    assert [issue.path for issue in info.value.issues] == [field]
    assert DEVICE_RULES[field].expected in str(info.value)


@pytest.mark.parametrize(("field", "bad"), COST_CASES)
def test_cost_model_reports_each_broken_field(cost_model, field, bad):
    """Every cost model field refuses its rule's bad values, by name."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        dataclasses.replace(cost_model, **{field: bad})
    # Assert
    assert field in [issue.path for issue in info.value.issues]


@pytest.mark.parametrize(("field", "bad"), SOLVER_CASES)
def test_solver_options_report_each_broken_field(field, bad):
    """Solver options refuse bad values by name."""
    with pytest.raises(InvalidInputError) as info:
        SolverOptions(**{field: bad})
    assert [issue.path for issue in info.value.issues] == [field]


@pytest.mark.parametrize(("field", "bad"), PROBLEM_CASES)
def test_problem_reports_each_broken_field(tiny_fleet, cost_model, field, bad):
    """Planning problem fields refuse bad values by name."""
    with pytest.raises(InvalidInputError) as info:
        PlanningProblem(devices=tiny_fleet, cost_model=cost_model, **{field: bad})
    assert [issue.path for issue in info.value.issues] == [field]


def test_three_broken_fields_give_three_issues(tiny_fleet):
    """All issues are collected before raising, in field order."""
    # Arrange
    device = tiny_fleet[0]
    # Act
    with pytest.raises(InvalidInputError) as info:
        dataclasses.replace(device, compute_scale=math.nan, uplink_mbps=-1.0, memory_bytes=0)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["compute_scale", "memory_bytes", "uplink_mbps"]
    assert str(info.value).splitlines()[0] == "compute_scale must be a finite number > 0; got nan"


def test_cost_model_layer_tuples_must_match_num_layers(cost_model):
    """Per-layer tuples of the wrong length are refused with the counts."""
    with pytest.raises(InvalidInputError) as info:
        dataclasses.replace(cost_model, layer_forward_s=(0.1, 0.1))
    assert str(info.value) == "layer_forward_s must be one entry per layer (6); got '2 entries'"


def _group(group_id: int, devices: tuple[str, ...]) -> Group:
    return Group(
        group_id=group_id,
        device_ids=devices,
        depth=1,
        intra_rounds=1,
        local_steps=1,
        label_skew=Skew(kl=0.0, l1=0.0, hellinger=0.0),
    )


def _plan(**overrides: object) -> Plan:
    fields: dict[str, object] = dict(
        groups=(_group(0, ("a", "b")), _group(1, ("c",))),
        predicted_round_time_s=1.0,
        predicted_rounds_to_target=10.0,
        objective_value=10.0,
        dual_bound=10.0,
        status=SolveStatus.OPTIMAL,
        limit=None,
        solve_time_s=0.1,
        solver="test",
        seed=0,
    )
    fields.update(overrides)
    return Plan(**fields)  # type: ignore[arg-type]


def test_plan_limit_is_set_iff_feasible():
    """An OPTIMAL plan has no limit; a FEASIBLE plan names the limit that stopped it."""
    # Act
    with pytest.raises(InvalidInputError) as optimal_info:
        _plan(limit=Limit.TIME)
    with pytest.raises(InvalidInputError) as feasible_info:
        _plan(status=SolveStatus.FEASIBLE, limit=None)
    # Assert
    assert [i.path for i in optimal_info.value.issues] == ["limit"]
    assert [i.path for i in feasible_info.value.issues] == ["limit"]
    assert _plan(status=SolveStatus.FEASIBLE, limit=Limit.TIME, dual_bound=8.0).relative_gap == pytest.approx(0.2)


def test_plan_refuses_a_device_in_two_groups():
    """Every device is in exactly one group."""
    with pytest.raises(InvalidInputError) as info:
        _plan(groups=(_group(0, ("a", "b")), _group(1, ("b",))))
    assert info.value.issues[0].path == "groups[1].device_ids"
    assert "'b' is also in groups[0]" in str(info.value)


def test_plan_refuses_infeasible_status():
    """A plan needs a feasible solution."""
    with pytest.raises(InvalidInputError) as info:
        _plan(status=SolveStatus.INFEASIBLE)
    assert [i.path for i in info.value.issues] == ["status"]


INT_FIELDS = {"num_groups", "min_group_size", "max_group_size", "min_group_samples", "max_group_samples", "local_steps"}


def _past(field, limit):
    """A value past ``limit``; integers of 20 digits, past int64 too."""
    if field.endswith("_choices"):
        return (1, 10**20)
    return 10**20 if field in INT_FIELDS | {"batch_size"} else limit * 10.0


@pytest.mark.parametrize(("field", "limit"), PROBLEM_LIMITS.items())
def test_problem_reports_each_field_past_its_bound_by_name(tiny_fleet, cost_model, field, limit):
    """A value past a field's bound is named with the bound, not met later as a plan field's error or an overflow
    in the solver's arrays (max_group_samples or intra_rounds_choices of 20 digits were exit 70)."""
    # Arrange
    bad = _past(field, limit)
    # Act
    with pytest.raises(InvalidInputError) as info:
        PlanningProblem(devices=tiny_fleet, cost_model=cost_model, **{field: bad})
    # Assert
    assert [issue.path for issue in info.value.issues] == [field]
    assert "at most" in info.value.issues[0].expected
