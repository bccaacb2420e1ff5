"""Targets relative to the run (fixed rule, level from the runs) and times to them, within rounds too."""

from __future__ import annotations

import dataclasses
import doctest
import json

import pytest

import hierfedlora.validation.targets as targets_module
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.validation.experiment_outputs import write_outputs
from hierfedlora.validation.experiment_presets import LOOP_METHOD, PRESETS, RunResult
from hierfedlora.validation.targets import interpolated_time, resolve_targets, retarget, time_at_round_end
from tests.factories import make_cost_model


def _run(method: str, seed: int, accuracy, times, *, observed=None, alpha=0.5) -> RunResult:
    return RunResult(
        method=method, alpha=alpha, seed=seed, plan_id="p", rounds=len(times), time_budget_s=30.0,
        final_accuracy=[a for a, t in zip(accuracy, times, strict=True) if t <= 30.0][-1], time_to_target_s=None,
        traffic_bytes=1, wall_time_s=1.0, replans=0, sim_time_s=tuple(times), accuracy=tuple(accuracy),
        num_devices=80, tier_mix="paper",
        observed_sim_time_s=tuple(t for t, _ in observed or ()), observed_accuracy=tuple(a for _, a in observed or ()),
    )  # fmt: skip


def _relative(r: float = 0.9):
    return dataclasses.replace(
        PRESETS["quick"], methods=("fedlora", "hierfedlora"), target_accuracy=None, target_relative=r
    )


def test_relative_target_is_the_rule_times_the_best_mean_final_accuracy_per_setting():
    """(T1) by hand: at alpha 0.5 the best mean is hierfedlora (0.5 + 0.7) / 2 = 0.6, so 0.54; alpha 0.1 alone."""
    # Arrange
    results = [
        _run("fedlora", 0, (0.3, 0.4), (10.0, 20.0)),
        _run("fedlora", 1, (0.3, 0.6), (10.0, 20.0)),
        _run("hierfedlora", 0, (0.4, 0.5), (10.0, 20.0)),
        _run("hierfedlora", 1, (0.4, 0.7), (10.0, 20.0)),
        _run("fedlora", 0, (0.1, 0.2, 0.9), (10.0, 20.0, 40.0), alpha=0.1),  # 0.9 lies past the budget
    ]
    # Act
    targets = resolve_targets(_relative(), results)
    timed = retarget(results, targets)
    # Assert
    assert targets[(0.5, 80, "paper")] == pytest.approx(0.54)
    assert targets[(0.1, 80, "paper")] == pytest.approx(0.18)
    assert [r.time_to_target_s for r in timed] == [None, 20.0, None, 20.0, 20.0]


def test_absolute_target_is_the_same_everywhere():
    """A preset with target_accuracy gives that level to every setting."""
    # Arrange
    results = [_run("fedlora", 0, (0.3,), (10.0,)), _run("fedlora", 0, (0.2,), (10.0,), alpha=0.1)]
    # Act
    targets = resolve_targets(PRESETS["quick"], results)
    # Assert
    assert set(targets.values()) == {PRESETS["quick"].target_accuracy}


def test_interpolation_uses_the_observations_inside_rounds_and_stops_at_the_budget():
    """With observations the crossing falls inside round 2; without, between round ends; none past the budget."""
    # Arrange
    coarse = _run("hierfedlora", 0, (0.2, 0.6), (10.0, 20.0))
    fine = dataclasses.replace(
        coarse, observed_sim_time_s=(5.0, 10.0, 12.0, 20.0), observed_accuracy=(0.1, 0.2, 0.5, 0.6)
    )
    late = _run("fedlora", 0, (0.2, 0.3, 0.9), (10.0, 20.0, 35.0))
    # Act / Assert
    assert interpolated_time(coarse, 0.4) == pytest.approx(15.0)  # 10 + (0.4 - 0.2) / 0.4 * 10
    assert interpolated_time(fine, 0.4) == pytest.approx(10.0 + 2.0 * (0.2 / 0.3))
    assert time_at_round_end(fine, 0.4) == 20.0
    assert interpolated_time(late, 0.5) is None and time_at_round_end(late, 0.5) is None


def test_preset_needs_exactly_one_kind_of_target():
    """Both targets, or neither, is one issue naming target_accuracy; a relative target above 1 is refused."""
    # Arrange
    quick = PRESETS["quick"]
    # Act
    with pytest.raises(InvalidInputError) as both:
        dataclasses.replace(quick, target_relative=0.9)
    with pytest.raises(InvalidInputError) as neither:
        dataclasses.replace(quick, target_accuracy=None)
    with pytest.raises(InvalidInputError) as too_big:
        dataclasses.replace(quick, target_accuracy=None, target_relative=1.5)
    # Assert
    assert [i.path for i in both.value.issues] == ["target_accuracy"]
    assert [i.path for i in neither.value.issues] == ["target_accuracy"]
    assert [i.path for i in too_big.value.issues] == ["target_relative"]


def test_long_preset_is_long_three_seeds_two_alphas_and_the_paper_methods():
    """At least 25 FedLoRA rounds of budget, seeds 0-2 at alpha 0.5 and 0.1, relative target, observed rounds."""
    # Arrange
    long, paper = PRESETS["long"], PRESETS["paper"]
    # Act
    settings = long.settings()
    # Assert
    assert long.budget_fedlora_rounds >= 25 and long.max_rounds >= 2 * long.budget_fedlora_rounds
    assert sorted((s.alpha, s.seed) for s in settings) == [(a, s) for a in (0.1, 0.5) for s in (0, 1, 2)]
    assert long.methods == paper.methods and LOOP_METHOD in long.methods
    assert long.target_relative == 0.9 and long.evaluate_intra_rounds
    assert "min" in long.description and "ESTIMATE" not in long.description


def test_report_states_the_rule_and_the_resolved_levels(tmp_path):
    """A relative target: the report names the rule and each level; results.json holds the recomputed times."""
    # Arrange
    results = [
        _run("fedlora", 0, (0.3, 0.5), (10.0, 20.0)),
        _run("hierfedlora", 0, (0.4, 0.6), (10.0, 20.0), observed=((5.0, 0.2), (10.0, 0.4), (15.0, 0.56), (20.0, 0.6))),
    ]
    # Act
    write_outputs(_relative(), make_cost_model(6), results, tmp_path)
    # Assert
    report = (tmp_path / "report.md").read_text()
    assert "90% of the best final accuracy of any method on the setting" in report and "alpha_0.5 54.0%" in report
    saved = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert saved["fedlora"]["time_to_target_s"] is None and saved["hierfedlora"]["time_to_target_s"] == 20.0
    assert "| time to target, interpolated (min) |" in report
    assert "| 0.24 |" in report  # hierfedlora crosses 0.54 at 10 + (0.54 - 0.4) / 0.16 * 5 = 14.375 s = 0.24 min


def test_targets_doctests_run():
    """The module's worked example (T2, T3) holds."""
    # Act
    result = doctest.testmod(targets_module)
    # Assert
    assert result.attempted > 0 and result.failed == 0
