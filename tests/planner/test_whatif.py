"""planner.whatif and planner.fleets.synthetic: studies as rows, typed failures, seeded fleets."""

from __future__ import annotations

import numpy as np
import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleets.synthetic import synthetic_fleet, synthetic_label_counts
from hierfedlora.planner.whatif import GroupingCache, Study, run_point, study_points

SMALL = {"num_classes": 4, "samples_per_device": 16, "problem": {"solver": {"grouping_method": "flow"}}}


def test_synthetic_fleets_are_seeded_and_their_skew_follows_alpha():
    """Same seed, same fleet; small alpha concentrates a device's labels on fewer classes than large alpha."""
    # Arrange
    rng_small, rng_large = np.random.default_rng(0), np.random.default_rng(0)
    # Act
    first = synthetic_fleet(num_devices=30, num_classes=10, alpha=0.1, samples_per_device=50, seed=3)
    again = synthetic_fleet(num_devices=30, num_classes=10, alpha=0.1, samples_per_device=50, seed=3)
    skewed = synthetic_label_counts(500, 10, 0.05, 100, rng_small)
    even = synthetic_label_counts(500, 10, 100.0, 100, rng_large)
    # Assert
    assert first == again
    assert all(d.num_samples == 50 and d.tier in ("jetson-tx2", "jetson-xavier-nx", "jetson-agx-orin")
               for d in first.devices)  # fmt: skip
    assert (skewed.max(axis=1) / 100).mean() > 0.6 > 0.2 > (even.max(axis=1) / 100).mean()


def test_bad_synthetic_arguments_are_all_named_at_once():
    """Every bad argument is one issue naming its field."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        synthetic_fleet(num_devices=3, num_classes=1, alpha=float("nan"), samples_per_device=5, tier_mix="laptops")
    # Assert
    assert [issue.path for issue in info.value.issues] == ["num_classes", "alpha", "tier_mix"]


def test_a_study_expands_its_cross_product_and_keys_survive_a_new_axis_value():
    """2 sizes x 2 backhauls = 4 points, the last axis fastest; adding a value keeps the old points' keys."""
    # Arrange
    study = Study(fleet_sizes=(20, 40), backhaul_mbps=(5.0, 50.0), **SMALL)
    wider = Study(fleet_sizes=(20, 40, 80), backhaul_mbps=(5.0, 50.0), **SMALL)
    # Act
    points = list(study_points(study))
    # Assert
    assert [(p.fleet_size, p.backhaul_mbps) for p in points] == [(20, 5.0), (20, 50.0), (40, 5.0), (40, 50.0)]
    assert study.swept == ("fleet_size", "backhaul_mbps")
    assert {p.key for p in points} <= {p.key for p in study_points(wider)}


def test_an_infeasible_setting_is_a_row_naming_the_conflict_and_the_others_still_plan():
    """A round budget below the fastest round gives an INFEASIBLE row with 'round_budget'; None plans."""
    # Arrange
    study = Study(fleet_sizes=(20,), round_budgets_s=(0.5, None), **SMALL)
    cache = GroupingCache()
    # Act
    rows = [run_point(point, cache) for point in study_points(study)]
    # Assert
    assert rows[0].status == "INFEASIBLE" and rows[0].conflicting == ("round_budget",)
    assert rows[0].time_to_target_s is None
    assert rows[1].status in ("OPTIMAL", "FEASIBLE") and rows[1].time_to_target_s > 0
    assert rows[1].device_traffic_to_target_bytes == pytest.approx(
        rows[1].device_traffic_bytes * rows[1].rounds_to_target
    )
    assert rows[1].groups == 2 and rows[1].peak_memory_bytes > 0


def test_an_invalid_setting_is_a_row_naming_the_field():
    """A problem field the planner refuses (local_steps 0) is an INVALID row whose reason names it."""
    # Arrange
    study = Study(fleet_sizes=(20,), num_classes=4, samples_per_device=16, problem={"local_steps": 0})
    # Act
    row = run_point(next(study_points(study)))
    # Assert
    assert row.status == "INVALID" and "local_steps" in row.reason


def test_a_slow_server_link_makes_the_large_fleet_cost_more_per_round():
    """With 1 Mbit/s at the server, 40 devices (4 groups) take longer global rounds than 20 (2 groups)."""
    # Arrange
    study = Study(fleet_sizes=(20, 40), server_ingress_mbps=(1.0,), **SMALL)
    # Act
    small, large = (run_point(point) for point in study_points(study))
    # Assert
    assert large.round_time_s > small.round_time_s


def test_a_real_fleet_file_is_planned_and_a_tier_file_mixes_tiers(tmp_path):
    """fleet_file replaces the synthetic fleet; a JSON tier mix file draws its tiers."""
    # Arrange
    from hierfedlora.planner.fleet import save_fleet
    from hierfedlora.planner.types import Fleet
    from tests.factories import make_devices

    save_fleet(tmp_path / "fleet.json", Fleet(devices=make_devices(12), class_names=("a", "b", "c", "d")))
    (tmp_path / "mix.json").write_text('{"laptop": 1, "phone-flagship": 1}')
    real = Study(fleet_file=str(tmp_path / "fleet.json"), **SMALL)
    mixed = Study(fleet_sizes=(20,), tier_mixes=(str(tmp_path / "mix.json"),), **SMALL)
    cache = GroupingCache()
    # Act
    real_row = run_point(next(study_points(real)), cache)
    mixed_row = run_point(next(study_points(mixed)), cache)
    fleet = cache.fleet(next(study_points(mixed)))
    # Assert
    assert real_row.status in ("OPTIMAL", "FEASIBLE") and real_row.groups == 1
    assert mixed_row.status in ("OPTIMAL", "FEASIBLE")
    assert sorted({d.tier for d in fleet.devices}) == ["laptop", "phone-flagship"]


def test_a_study_with_bad_values_names_every_field_and_position():
    """Each bad axis value is one issue with its list position; fixed fields are checked too."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        Study(fleet_sizes=(80, 0), backhaul_mbps=(), networks=("3g",), target_loss_gaps=(1.5,), num_classes=1)
    # Assert
    assert [issue.path for issue in info.value.issues] == [
        "fleet_sizes[1]",
        "networks[0]",
        "backhaul_mbps",
        "target_loss_gaps[0]",
        "num_classes",
    ]
