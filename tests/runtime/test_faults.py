"""Faults: seeded dropout, stragglers with a deadline, poisoned updates and their screening (clock and engine)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.runtime.clock import global_round_time_s
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.faults import FAULT_RULES, FaultOptions, draw_round_faults, poison_state, screen_updates
from tests.factories import make_cost_model, make_devices, make_two_group_plan
from tests.runtime.runs import committed_tensors, run_options

IDS = tuple(f"d{i}" for i in range(1000))


@pytest.mark.parametrize(("field", "bad"), [(f, v) for f, r in FAULT_RULES.items() for v in r.bad_values])
def test_fault_options_report_each_broken_field(field, bad):
    """A bad value is reported under its field's name, whatever the value."""
    with pytest.raises(InvalidInputError) as info:
        FaultOptions(**{field: bad})
    assert [issue.path for issue in info.value.issues] == [field]


def test_round_faults_are_seeded_and_near_their_rates():
    """The same seed and round give the same faults; the rates hold on 1,000 devices; rounds differ."""
    # Arrange
    options = FaultOptions(dropout=0.2, straggler_frac=0.1, poison_frac=0.05)
    # Act
    first = draw_round_faults(options, IDS, seed=4, global_round=1)
    again = draw_round_faults(options, IDS, seed=4, global_round=1)
    other = draw_round_faults(options, IDS, seed=4, global_round=2)
    # Assert
    assert first == again and first.offline != other.offline
    assert 150 <= len(first.offline) <= 250
    assert 50 <= len(first.slowdown) <= 110 and not set(first.slowdown) & first.offline
    assert 20 <= len(first.poisoned) <= 70 and not set(first.poisoned) & first.offline
    assert set(first.poisoned.values()) <= {"nan", "inf", "scale"}


def test_changing_one_rate_leaves_the_other_draws():
    """Stragglers drawn with and without dropout are the same devices, less those now offline."""
    base = draw_round_faults(FaultOptions(straggler_frac=0.3), IDS, seed=1, global_round=3)
    with_dropout = draw_round_faults(FaultOptions(straggler_frac=0.3, dropout=0.5), IDS, seed=1, global_round=3)
    assert set(with_dropout.slowdown) == set(base.slowdown) - with_dropout.offline


def test_poison_kinds_and_screening():
    """NaN and Inf states are refused as non-finite; a scaled update is refused by the norm bound; honest ones pass."""
    # Arrange
    start = {"w": torch.zeros(3)}
    honest = [{"w": torch.tensor([0.1, 0.2, 0.1]) * (1 + i / 10)} for i in range(4)]
    sent = [*honest, *(poison_state(start, honest[0], kind, 1000.0) for kind in ("nan", "inf", "scale"))]
    # Act
    refused = screen_updates(start, sent, norm_bound_ratio=10.0)
    # Assert
    assert sorted(refused) == [4, 5, 6]
    assert refused[4] == refused[5] == "non-finite values" and refused[6].startswith("update norm")
    assert torch.allclose(sent[6]["w"], honest[0]["w"] * 1000)


def _timing(plan, devices, **faults):
    return global_round_time_s(
        plan,
        make_cost_model(2),
        {d.device_id: d for d in devices},
        backhaul_mbps=20.0,
        intra_latency_s=0.05,
        global_latency_s=1.0,
        **faults,
    )


def test_clock_prices_offline_devices_stragglers_and_deadlines(six_device_fleet):
    """Offline devices cost nothing; a straggler stretches its group; a deadline cuts it and names who missed it."""
    # Arrange
    fleet, _ = six_device_fleet
    plan, devices = make_two_group_plan(fleet), make_devices(6)
    devices = [dataclasses.replace(d, device_id=f.device_id) for d, f in zip(devices, fleet.devices, strict=True)]
    slow = plan.groups[1].device_ids[0]
    # Act
    plain = _timing(plan, devices)
    no_faults_path = _timing(plan, devices, slowdown={})
    offline = _timing(plan, devices, offline=plan.groups[0].device_ids)
    straggling = _timing(plan, devices, slowdown={slow: 10.0})
    cut = _timing(plan, devices, slowdown={slow: 10.0}, deadline_quantile=0.5)
    # Assert
    assert no_faults_path.round_s == plain.round_s
    assert offline.groups[0].group_s == 0 and offline.groups[0].upload_bytes == 0
    assert offline.groups[1] == dataclasses.replace(plain.groups[1], missed=((),))
    assert straggling.groups[1].device_step_s[slow] == pytest.approx(10 * plain.groups[1].device_step_s[slow])
    assert straggling.groups[1].group_s > plain.groups[1].group_s
    assert cut.groups[1].missed == ((slow,),)
    assert plain.groups[1].group_s <= cut.groups[1].group_s < straggling.groups[1].group_s
    assert cut.groups[1].upload_bytes == 2 * plain.groups[1].upload_bytes // 3


def test_dropped_devices_send_nothing_and_the_rest_aggregate(tmp_path, six_device_fleet, minilm_slice_dir):
    """Dropouts are named, train nothing, and the round's adapters stay finite; a resumed faulty run is exact."""
    # Arrange
    fleet, _ = six_device_fleet
    plan, cost, faults = make_two_group_plan(fleet), make_cost_model(2), FaultOptions(dropout=0.4, poison_frac=0.3)
    context = prepare_run(plan, fleet, run_options(minilm_slice_dir, 3))
    # Act
    reports = list(
        run_plan(plan, fleet, cost, run_options(minilm_slice_dir, 3), tmp_path / "a", context=context, faults=faults)
    )
    list(run_plan(plan, fleet, cost, run_options(minilm_slice_dir, 1), tmp_path / "b", context=context, faults=faults))
    list(
        run_plan(
            plan,
            fleet,
            cost,
            run_options(minilm_slice_dir, 3),
            tmp_path / "b",
            context=context,
            faults=faults,
            resume=True,
        )
    )
    # Assert
    ids = tuple(d.device_id for d in fleet.devices)
    expected = [draw_round_faults(faults, ids, seed=3, global_round=r) for r in (1, 2, 3)]
    assert [r.dropped_device_ids for r in reports] == [tuple(sorted(e.offline)) for e in expected]
    assert any(r.dropped_device_ids for r in reports)
    for report, drawn in zip(reports, expected, strict=True):
        assert not set(report.measured_step_s) & drawn.offline
        assert set(report.rejected_device_ids) <= set(drawn.poisoned)
        assert {d for d, k in drawn.poisoned.items() if k in ("nan", "inf")} <= set(report.rejected_device_ids)
    assert any(r.rejected_device_ids for r in reports)
    whole, split = committed_tensors(tmp_path / "a"), committed_tensors(tmp_path / "b")
    assert all(torch.isfinite(v).all() for v in whole.values())
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_a_group_with_every_device_offline_is_left_out(tmp_path, six_device_fleet, minilm_slice_dir):
    """With dropout near one, a group may send nothing: its loss is null, and the other group still merges."""
    fleet, _ = six_device_fleet
    plan = make_two_group_plan(fleet)
    faults = FaultOptions(dropout=0.99)
    (report,) = run_plan(
        plan, fleet, make_cost_model(2), run_options(minilm_slice_dir, 1), tmp_path / "r", faults=faults
    )
    assert set(report.dropped_device_ids) == set(plan.device_ids)
    assert [g.loss for g in report.groups] == [None, None]
    assert report.sim_time_s == 0.0 and report.upload_bytes == 0
    assert math.isfinite(report.eval_loss)


def _cli(tmp_path, fleet_path, plan, model_dir, *extra: str) -> list[str]:
    from hierfedlora.planner.io import write_json

    write_json(tmp_path / "plan.json", plan)
    write_json(tmp_path / "cost.json", make_cost_model(2))
    return [
        sys.executable, "-m", "hierfedlora.cli", "run", str(tmp_path / "plan.json"), "--fleet", str(fleet_path),
        "--cost-model", str(tmp_path / "cost.json"), "--rounds", "2", "--out", str(tmp_path / "run"),
        "--model", str(model_dir), "--eval-samples", "16", "--seed", "3",
        "--allow-cost-mismatch",  # the hand plan's batch of 4 is not the cost model's 16
        *extra,
    ]  # fmt: skip


def test_cli_runs_with_faults_from_flags_and_file(tmp_path, six_device_fleet, minilm_slice_dir):
    """`run --faults FILE --dropout P` runs, the flag overrides the file, and the reports name the faults."""
    # Arrange
    fleet, fleet_path = six_device_fleet
    (tmp_path / "faults.json").write_text(json.dumps({"dropout": 0.9, "poison_frac": 0.4, "poison_kinds": ["nan"]}))
    command = _cli(tmp_path, fleet_path, make_two_group_plan(fleet), minilm_slice_dir,
                   "--faults", str(tmp_path / "faults.json"), "--dropout", "0.3")  # fmt: skip
    # Act
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    # Assert
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in (tmp_path / "run" / "reports.jsonl").read_text().splitlines()]
    faults = FaultOptions(dropout=0.3, poison_frac=0.4, poison_kinds=("nan",))
    ids = tuple(d.device_id for d in fleet.devices)
    drawn = [draw_round_faults(faults, ids, seed=3, global_round=r) for r in (1, 2)]
    assert [tuple(r["dropped_device_ids"]) for r in reports] == [tuple(sorted(d.offline)) for d in drawn]
    assert [tuple(r["rejected_device_ids"]) for r in reports] == [tuple(sorted(d.poisoned)) for d in drawn]


def test_cli_refuses_a_bad_fault_flag_before_training(tmp_path, six_device_fleet, minilm_slice_dir):
    """`--dropout 1.5` exits 2 with one line naming the flag; no run folder content is written."""
    fleet, fleet_path = six_device_fleet
    command = _cli(tmp_path, fleet_path, make_two_group_plan(fleet), minilm_slice_dir, "--dropout", "1.5")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--dropout must be a number in [0, 1); got 1.5" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "reports.jsonl").exists()
