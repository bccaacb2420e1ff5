"""Observed evaluations inside a global round: right model, right time, no effect on the run."""

from __future__ import annotations

import dataclasses
import doctest

import pytest
import torch

import hierfedlora.runtime.intra_evaluation as intra_evaluation
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.intra_evals import IntraRoundEval
from hierfedlora.planner.io import from_json, to_json
from hierfedlora.planner.outcomes import RoundReport
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import prepare_run, run_plan
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import committed_tensors, run_options


def _with_taus(plan, taus):
    groups = tuple(dataclasses.replace(g, intra_rounds=t) for g, t in zip(plan.groups, taus, strict=True))
    return dataclasses.replace(plan, groups=groups)


def _round_end(report: RoundReport) -> dict:
    data = dataclasses.asdict(report)
    for key in ("wall_time_s", "measured_step_s", "intra_evals"):
        data.pop(key)
    return data


def test_observer_records_every_level_but_the_last_and_changes_nothing(tmp_path, small_fleet, minilm_slice_dir):
    """Taus (3, 1) give two observations a round, inside the round; round ends and adapters stay bit for bit."""
    # Arrange
    fleet, _ = small_fleet
    plan, cost = _with_taus(make_two_group_plan(fleet), (3, 1)), make_cost_model(2)
    context = prepare_run(plan, fleet, run_options(minilm_slice_dir, 2))
    # Act
    plain = list(run_plan(plan, fleet, cost, run_options(minilm_slice_dir, 2), tmp_path / "plain", context=context))
    seen = list(
        run_plan(
            plan,
            fleet,
            cost,
            run_options(minilm_slice_dir, 2, evaluate_intra_rounds=True),
            tmp_path / "seen",
            context=context,
        )
    )
    # Assert
    assert [r.intra_evals for r in plain] == [(), ()]
    assert [[e.intra_round for e in r.intra_evals] for r in seen] == [[1, 2], [1, 2]]
    starts = [0.0, seen[0].sim_time_s]
    for start, report in zip(starts, seen, strict=True):
        times = [e.sim_time_s for e in report.intra_evals]
        assert start < times[0] < times[1] < report.sim_time_s
    assert [_round_end(r) for r in seen] == [_round_end(r) for r in plain]
    plain_state, seen_state = committed_tensors(tmp_path / "plain"), committed_tensors(tmp_path / "seen")
    assert plain_state.keys() == seen_state.keys()
    assert all(torch.equal(plain_state[k], seen_state[k]) for k in plain_state)
    assert [r.intra_evals for r in read_reports(tmp_path / "seen" / REPORTS_NAME)] == [r.intra_evals for r in seen]


def test_observed_model_after_level_one_is_the_one_level_round(tmp_path, small_fleet, minilm_slice_dir):
    """One group: the model seen after intra round 1 of a tau-2 round, and its time, are a tau-1 round's end."""
    # Arrange
    fleet, _ = small_fleet
    base = make_two_group_plan(fleet)
    one_group = dataclasses.replace(
        base, groups=(dataclasses.replace(base.groups[0], device_ids=tuple(d.device_id for d in fleet.devices)),)
    )
    cost = make_cost_model(2)
    context = prepare_run(one_group, fleet, run_options(minilm_slice_dir, 1))
    # Act
    (two_levels,) = list(
        run_plan(
            _with_taus(one_group, (2,)),
            fleet,
            cost,
            run_options(minilm_slice_dir, 1, evaluate_intra_rounds=True),
            tmp_path / "two",
            context=context,
        )
    )
    (one_level,) = list(
        run_plan(
            _with_taus(one_group, (1,)),
            fleet,
            cost,
            run_options(minilm_slice_dir, 1),
            tmp_path / "one",
            context=context,
        )
    )
    # Assert
    (observed,) = two_levels.intra_evals
    assert observed.eval_loss == one_level.eval_loss
    assert observed.eval_accuracy == one_level.eval_accuracy
    assert observed.sim_time_s == pytest.approx(one_level.sim_time_s, rel=1e-12)


def test_report_round_trips_and_refuses_disordered_observations():
    """Observations survive JSON; a later one at an earlier time, or one past the round's end, is refused."""
    # Arrange
    first = IntraRoundEval(intra_round=1, sim_time_s=2.0, eval_loss=1.5, eval_accuracy=0.3)
    second = IntraRoundEval(intra_round=2, sim_time_s=3.0, eval_loss=1.2, eval_accuracy=0.4)
    report = RoundReport(
        plan_id="p", global_round=1, sim_time_s=4.0, wall_time_s=1.0, groups=(), eval_loss=1.0,
        eval_accuracy=0.5, intra_evals=(first, second),
    )  # fmt: skip
    # Act
    back = from_json(RoundReport, to_json(report))
    with pytest.raises(InvalidInputError) as backwards:
        dataclasses.replace(report, intra_evals=(second, dataclasses.replace(first, intra_round=3)))
    with pytest.raises(InvalidInputError) as too_late:
        dataclasses.replace(report, sim_time_s=2.5)
    # Assert
    assert back == report
    assert [issue.path for issue in backwards.value.issues] == ["intra_evals"]
    assert [issue.path for issue in too_late.value.issues] == ["intra_evals"]


def test_intra_evaluation_doctests_run():
    """The time formula's example (O2) holds."""
    # Act
    result = doctest.testmod(intra_evaluation)
    # Assert
    assert result.attempted > 0 and result.failed == 0
