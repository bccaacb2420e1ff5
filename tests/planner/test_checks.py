"""Cross-object checks, feasibility arithmetic and warnings, each message read in full."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from hierfedlora.planner import costs
from hierfedlora.planner.checks import (
    FAMILIES,
    check_feasibility,
    check_problem,
    find_warnings,
    format_bytes,
    raise_for_problem,
)
from hierfedlora.planner.errors import HierFedLoraWarning, InfeasibleError, InvalidInputError
from hierfedlora.planner.types import PlanningProblem


@pytest.fixture
def problem(tiny_fleet, cost_model) -> PlanningProblem:
    """The 8-device fleet (248 samples) with the toy 6-layer model; nothing wrong with it."""
    return PlanningProblem(devices=tiny_fleet, cost_model=cost_model, num_groups=2)


def _with_device(problem: PlanningProblem, idx: int, **changes: object) -> tuple:
    devices = list(problem.devices)
    devices[idx] = dataclasses.replace(devices[idx], **changes)
    return tuple(devices)


# ---------------------------------------------------------------------------------------------
# 1. Cross-object rules
# ---------------------------------------------------------------------------------------------

BAD_INPUTS = [
    (
        "duplicate_device_id",
        lambda p: {"devices": _with_device(p, 2, device_id="d1")},
        "devices[2].device_id must be a device id unique in the fleet ('d1' is also devices[1]); got 'd1'",
    ),
    (
        "class_count_differs",
        lambda p: {"devices": _with_device(p, 5, label_counts=(1, 2, 3))},
        "devices[5].label_counts must be a list of 4 counts, one per class as in devices[0]; got (1, 2, 3)",
    ),
    (
        "depth_beyond_layers",
        lambda p: {"depth_choices": (1, 7)},
        "depth_choices must be depths within 1..6 (the cost model's num_layers); got (1, 7)",
    ),
    (
        "max_group_size_below_min",
        lambda p: {"min_group_size": 4, "max_group_size": 2},
        "max_group_size must be >= min_group_size (4), or null; got 2",
    ),
    (
        "max_group_samples_below_min",
        lambda p: {"min_group_samples": 100, "max_group_samples": 50},
        "max_group_samples must be >= min_group_samples (100), or null; got 50",
    ),
    (
        "intra_rounds_repeated",
        lambda p: {"intra_rounds_choices": (1, 2, 2)},
        "intra_rounds_choices must be a list of distinct integers >= 1; got (1, 2, 2)",
    ),
]


@pytest.mark.parametrize(("name", "changes", "message"), BAD_INPUTS, ids=[row[0] for row in BAD_INPUTS])
def test_each_cross_object_rule_reports_field_expected_and_got(problem, name, changes, message):
    """Each broken rule is one issue whose line names the field, the whole rule and the value."""
    # Arrange
    bad = dataclasses.replace(problem, **changes(problem))
    # Act
    with pytest.raises(InvalidInputError) as info:
        raise_for_problem(bad)
    # Assert
    assert str(info.value) == message
    assert [str(issue) for issue in check_problem(bad)] == [message]


def test_three_broken_fields_give_three_issues(problem):
    """Every cross-object issue is collected before raising, in one error."""
    # Arrange
    bad = dataclasses.replace(
        problem,
        devices=_with_device(problem, 4, device_id="d0"),
        depth_choices=(9,),
        intra_rounds_choices=(4, 4),
    )
    # Act
    with pytest.raises(InvalidInputError) as info:
        raise_for_problem(bad)
    # Assert
    assert [issue.path for issue in info.value.issues] == [
        "devices[4].device_id",
        "depth_choices",
        "intra_rounds_choices",
    ]
    assert len(str(info.value).splitlines()) == 3


def test_a_consistent_problem_passes_silently(problem):
    """No issue, no conflict, no warning for a sound problem."""
    # Arrange / Act
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raise_for_problem(problem)
    # Assert
    assert check_problem(problem) == [] and check_feasibility(problem) == []


# ---------------------------------------------------------------------------------------------
# 2. Feasibility arithmetic
# ---------------------------------------------------------------------------------------------

CONFLICTS = [
    (
        "too_few_devices_for_min_size",
        {"num_groups": 3, "min_group_size": 3},
        ("group_sizes",),
        "min_group_size × num_groups = 3 × 3 = 9 > 8 devices",  # noqa: RUF001
    ),
    (
        "too_many_devices_for_max_size",
        {"num_groups": 2, "max_group_size": 3},
        ("group_sizes",),
        "max_group_size × num_groups = 3 × 2 = 6 < 8 devices",  # noqa: RUF001
    ),
    (
        "more_groups_than_devices",
        {"num_groups": 9},
        ("num_groups",),
        "num_groups = 9 > 8 devices: some group would be empty",
    ),
    (
        "more_groups_than_devices_with_a_minimum_size",
        {"num_groups": 9, "min_group_size": 1},
        ("num_groups", "group_sizes"),
        "num_groups = 9 > 8 devices: some group would be empty; min_group_size × num_groups = 1 × 9 = 9 > 8 devices",  # noqa: RUF001
    ),
    (
        "no_number_of_groups_fits",
        {"num_groups": None, "min_group_size": 3, "max_group_size": 3},
        ("group_sizes",),
        "no number of groups fits 8 devices into groups of 3..3 devices: at least 3 groups are needed and at most "
        "2 can be filled",
    ),
    (
        "too_few_samples",
        {"min_group_samples": 150},
        ("group_samples",),
        "min_group_samples × num_groups = 150 × 2 = 300 > 248 samples in the fleet",  # noqa: RUF001
    ),
    (
        "too_many_samples",
        {"max_group_samples": 60},
        ("group_samples",),
        "max_group_samples × num_groups = 60 × 2 = 120 < 248 samples in the fleet",  # noqa: RUF001
    ),
    (
        "device_over_max_samples",
        {"num_groups": 8, "max_group_samples": 31},
        ("group_samples",),
        "d0 holds 32, d1 holds 32, d2 holds 32 samples > max_group_samples = 31 (and 1 more); a device cannot be split",
    ),
    (
        "traffic_below_the_least",
        {"traffic_budget_bytes": 1000.0},
        ("traffic_budget",),
        # 8 devices, intra_rounds 1, both ways, 49,152 adapter + 40,040 head bytes at depth 1
        "traffic_budget_bytes = 1000 is below the least possible traffic per round, 1,427,072 bytes: 8 devices × "  # noqa: RUF001
        "intra_rounds 1 × 2 ways × 89,192 adapter bytes at depth 1",  # noqa: RUF001
    ),
]


@pytest.mark.parametrize(("name", "changes", "families", "reason"), CONFLICTS, ids=[row[0] for row in CONFLICTS])
def test_arithmetic_conflicts_carry_their_numbers(problem, name, changes, families, reason):
    """Arithmetic that proves infeasibility raises before any solver, with the numbers and the family."""
    # Arrange
    bad = dataclasses.replace(problem, **changes)
    # Act
    with pytest.raises(InfeasibleError) as info:
        raise_for_problem(bad)
    # Assert
    assert info.value.reason == reason
    assert info.value.conflicting == families
    assert set(families) <= set(FAMILIES)
    assert info.value.hint


def test_memory_conflict_names_the_device_and_both_amounts(problem):
    """A device that cannot hold the smallest depth is named with what it needs and what it has."""
    # Arrange: (C4) at depth 1, batch 16 = 91,000,000 + 196,608 + 160,160 + 70,400,000 bytes
    bad = dataclasses.replace(problem, devices=_with_device(problem, 3, memory_bytes=100 * 2**20))
    # Act
    with pytest.raises(InfeasibleError) as info:
        raise_for_problem(bad)
    # Assert
    assert info.value.reason == "d3 needs 154.3 MiB at depth 1 and has 100.0 MiB"
    assert info.value.conflicting == ("memory",)


def test_memory_conflict_shows_exact_bytes_when_the_short_forms_agree(problem):
    """When both amounts round to the same MiB, the message shows them in bytes."""
    # Arrange
    need = costs.peak_memory_bytes(problem.cost_model, depth=1, batch_size=16)
    bad = dataclasses.replace(problem, devices=_with_device(problem, 0, memory_bytes=need - 1))
    # Act
    conflicts = check_feasibility(bad)
    # Assert
    assert [c.reason for c in conflicts] == [f"d0 needs {need:,} B at depth 1 and has {need - 1:,} B"]


def test_round_budget_conflict_names_the_slowest_device(problem):
    """Below the fastest possible round: the slowest device alone at depth 1, plus global aggregation."""
    # Arrange
    cost = problem.cost_model
    alone_s = problem.local_steps * costs.step_time_s(cost, compute_scale=8.0, depth=1, batch_size=16)
    alone_s += costs.exchange_time_s(cost, problem.devices[6], depth=1, latency_s=problem.intra_latency_s)
    global_s = costs.global_aggregation_s(cost, [1], backhaul_mbps=problem.backhaul_mbps, latency_s=1.0)
    bad = dataclasses.replace(problem, round_budget_s=1.0)
    # Act
    with pytest.raises(InfeasibleError) as info:
        raise_for_problem(bad)
    # Assert
    assert info.value.reason == (
        f"round_budget_s = 1 s is below the fastest possible round, {alone_s + global_s:.4g} s: d6 alone needs "
        f"{alone_s:.4g} s at depth 1 with intra_rounds 1, plus {global_s:.4g} s of global aggregation"
    )
    assert info.value.conflicting == ("round_budget",)


def test_every_conflict_is_reported_at_once(problem):
    """Sizes, memory and traffic all broken: one error names the three families, in order."""
    # Arrange
    bad = dataclasses.replace(
        problem,
        devices=_with_device(problem, 3, memory_bytes=2**20),
        min_group_size=5,
        traffic_budget_bytes=1.0,
    )
    # Act
    with pytest.raises(InfeasibleError) as info:
        raise_for_problem(bad)
    # Assert
    assert info.value.conflicting == ("group_sizes", "memory", "traffic_budget")
    assert info.value.reason.count("; ") == 2


def test_a_budget_met_within_tolerance_is_not_a_conflict(problem):
    """A round budget equal to the fastest round, up to float rounding, is feasible."""
    # Arrange
    tight = dataclasses.replace(problem, round_budget_s=1.0)
    fastest_s = float(check_feasibility(tight)[0].hint.split()[-2])  # "... at least 11.23 s"
    # Act
    conflicts = check_feasibility(dataclasses.replace(problem, round_budget_s=fastest_s * 1.001))
    # Assert
    assert conflicts == []


@pytest.mark.parametrize(
    ("amount", "text"),
    [(512, "512 B"), (2048, "2.0 KiB"), (3 * 2**20, "3.0 MiB"), (int(2.3 * 2**30), "2.3 GiB")],
)
def test_format_bytes_picks_the_unit(amount, text):
    """Byte amounts read in the largest binary unit that keeps them >= 1."""
    # Arrange / Act
    result = format_bytes(amount)
    # Assert
    assert result == text


# ---------------------------------------------------------------------------------------------
# 3. Warnings
# ---------------------------------------------------------------------------------------------

SUSPICIOUS = [
    ("one_group", {"num_groups": 1}, "num_groups = 1: one group is flat federated LoRA"),
    ("one_group_resolved", {"num_groups": None}, "num_groups resolves to 1 for 8 devices: one group is flat"),
    ("full_depth_only", {"depth_choices": (6,)}, "depth_choices = (6,) allows full depth only"),
    ("no_intra_rounds", {"intra_rounds_choices": (1,)}, "intra_rounds_choices = (1,): groups never aggregate"),
]


@pytest.mark.parametrize(("name", "changes", "start"), SUSPICIOUS, ids=[row[0] for row in SUSPICIOUS])
def test_suspicious_input_warns_at_the_callers_line(problem, name, changes, start):
    """Legal but suspicious settings warn (HierFedLoraWarning), pointing at the caller's file."""
    # Arrange
    odd = dataclasses.replace(problem, **changes)
    # Act
    with pytest.warns(HierFedLoraWarning) as record:
        raise_for_problem(odd)
    # Assert
    assert len(record) == 1 and record[0].filename == __file__
    assert str(record[0].message).startswith(start)
    assert len(find_warnings(odd)) == 1
