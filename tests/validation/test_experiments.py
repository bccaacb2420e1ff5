"""The experiment harness: presets checked up front, metrics as defined, artefacts written, runs resumable."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import read_json
from hierfedlora.planner.types import ConvergenceParams
from hierfedlora.validation.experiment_pool import threads_per_worker
from hierfedlora.validation.experiment_report import pair_speedup
from hierfedlora.validation.experiments import (
    PRESETS,
    RunResult,
    alpha_name,
    clock_devices_for,
    markdown_table,
    read_preset,
    summarize,
    write_outputs,
)
from tests.factories import make_cost_model, make_devices


def _result(
    method: str, seed: int, accuracy: tuple[float, ...], times: tuple[float, ...], alpha=0.1, devices=80, mix="paper"
) -> RunResult:
    budget = 30.0
    within = [i for i, t in enumerate(times) if t <= budget]
    reached = next((times[i] for i in within if accuracy[i] >= 0.3), None)
    return RunResult(
        method=method,
        alpha=alpha,
        seed=seed,
        plan_id="abc",
        rounds=len(times),
        time_budget_s=budget,
        final_accuracy=accuracy[within[-1]],
        time_to_target_s=reached,
        traffic_bytes=1_000_000,
        wall_time_s=1.0,
        replans=0,
        sim_time_s=times,
        accuracy=accuracy,
        num_devices=devices,
        tier_mix=mix,
    )


def test_presets_fix_target_and_budget_and_refuse_bad_fields():
    """Every preset names FedLoRA and a target; a preset without FedLoRA or with a bad target is refused by field."""
    # Arrange
    paper = PRESETS["paper"]
    # Act / Assert
    assert all("fedlora" in p.methods for p in PRESETS.values())
    assert all(
        0 < p.target_accuracy < 1
        if p.target_relative is None
        else p.target_accuracy is None and 0 < p.target_relative <= 1
        for p in PRESETS.values()
    )
    assert paper.fleet_sizes == (80,) and set(paper.alphas) == {None, 1.0, 0.5, 0.1}
    pairs = [(s.alpha, s.seed) for s in paper.settings()]
    assert (0.1, 1) in pairs and (0.5, 1) in pairs and (None, 1) not in pairs  # two seeds where the bar is judged
    assert [s.name for s in paper.settings()][:2] == ["iid_seed0", "alpha_1_seed0"]
    with pytest.raises(InvalidInputError, match="methods"):
        dataclasses.replace(paper, methods=("hierfavg",))
    with pytest.raises(InvalidInputError, match="target_accuracy"):
        dataclasses.replace(paper, target_accuracy=1.5)
    with pytest.raises(InvalidInputError, match="nonsense"):
        dataclasses.replace(paper, methods=("fedlora", "nonsense"))


def test_summary_speedup_is_fedlora_time_over_method_time():
    """Speed-up = FedLoRA's time to target / the method's, per seed, then averaged; a miss gives no speed-up."""
    # Arrange
    results = [
        _result("fedlora", 0, (0.1, 0.2, 0.3), (10.0, 20.0, 30.0)),
        _result("hierfedlora", 0, (0.2, 0.35, 0.4), (5.0, 10.0, 15.0)),
        _result("fedlora", 1, (0.1, 0.3, 0.35), (10.0, 20.0, 30.0)),
        _result("hierfedlora", 1, (0.3, 0.4, 0.5), (5.0, 10.0, 40.0)),
        _result("legend", 0, (0.1, 0.1, 0.1), (10.0, 20.0, 30.0)),
    ]
    # Act
    rows = {row["method"]: row for row in summarize(results)}
    # Assert
    assert rows["hierfedlora"]["speedup_vs_fedlora"] == pytest.approx((30 / 10 + 20 / 5) / 2)
    assert rows["hierfedlora"]["final_accuracy"] == pytest.approx((0.4 + 0.4) / 2)  # 40 s is past the budget
    assert rows["legend"]["speedup_vs_fedlora"] is None and rows["legend"]["reached_target"] == 0
    assert rows["fedlora"]["speedup_vs_fedlora"] == pytest.approx(1.0)
    assert "| alpha_0.1 | legend |" in markdown_table(list(rows.values()))


def test_grid_axes_name_settings_and_split_the_summary():
    """Fleet size and device mix are grid axes: named in folders only when they vary, summarised apart."""
    # Arrange
    preset = dataclasses.replace(PRESETS["quick"], fleet_sizes=(12, 24), tier_mixes=("paper", "phones"))
    results = [
        _result("fedlora", 0, (0.1, 0.3), (10.0, 20.0), devices=12),
        _result("hierfedlora", 0, (0.3, 0.4), (5.0, 10.0), devices=12),
        _result("fedlora", 0, (0.1, 0.2), (10.0, 20.0), devices=24),
        _result("hierfedlora", 0, (0.2, 0.2), (5.0, 10.0), devices=24),
    ]
    # Act
    names = [s.name for s in preset.settings()]
    rows = summarize(results)
    # Assert
    assert names == [
        "alpha_0.5_n12_paper_seed0",
        "alpha_0.5_n12_phones_seed0",
        "alpha_0.5_n24_paper_seed0",
        "alpha_0.5_n24_phones_seed0",
    ]
    assert [(r["setting"], r["method"]) for r in rows] == [
        ("alpha_0.1_n12", "fedlora"),
        ("alpha_0.1_n12", "hierfedlora"),
        ("alpha_0.1_n24", "fedlora"),
        ("alpha_0.1_n24", "hierfedlora"),
    ]
    assert rows[1]["speedup_vs_fedlora"] == pytest.approx(20 / 5)
    assert rows[3]["speedup_vs_fedlora"] is None  # 24 devices: neither reached 0.3


def test_speedup_at_the_reference_final_accuracy():
    """The secondary speed-up: reference's time to its own final accuracy over the method's time to it."""
    # Arrange
    fedlora = _result("fedlora", 0, (0.1, 0.2, 0.25), (10.0, 20.0, 30.0))
    faster = _result("hierfedlora", 0, (0.26, 0.3, 0.35), (7.5, 15.0, 22.5))
    never = _result("legend", 0, (0.1, 0.2, 0.24), (10.0, 20.0, 30.0))
    # Act / Assert
    assert pair_speedup(fedlora, faster) == (None, pytest.approx(30.0 / 7.5))  # target 0.3 missed by FedLoRA
    assert pair_speedup(fedlora, never) == (None, None)
    assert pair_speedup(fedlora, fedlora)[1] == pytest.approx(1.0)


def test_preset_file_is_checked_field_by_field(tmp_path):
    """A JSON preset loads; a broken one names each bad field, the expectation and the value."""
    # Arrange
    from hierfedlora.planner.io import to_dict

    good = tmp_path / "good.json"
    good.write_text(json.dumps(to_dict(dataclasses.replace(PRESETS["quick"], name="mine", fleet_sizes=(12, 20)))))
    broken = dict(to_dict(PRESETS["quick"]), fleet_sizes=[0], tier_mixes=["moon"], learning_rate=-1)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    # Act
    loaded = read_preset(good)
    with pytest.raises(InvalidInputError) as caught:
        read_preset(bad)
    # Assert
    assert loaded.name == "mine" and loaded.fleet_sizes == (12, 20) and len(loaded.settings()) == 2
    message = str(caught.value)
    assert all(field in message for field in ("fleet_sizes", "tier_mixes", "learning_rate", "moon"))


def test_cli_refuses_a_bad_preset_file_with_exit_2(tmp_path):
    """`hierfedlora experiment --preset-file` with a broken file exits 2 naming the field, writing nothing."""
    # Arrange
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x"}))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hierfedlora.cli", "experiment", "--preset-file", str(bad), "--out", str(out)]
    # Act
    done = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert done.returncode == 2 and "fleet_sizes" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_outputs_are_written_and_state_the_fixed_target(tmp_path):
    """results.json/csv, summary.csv, a plot per level and a report naming the target and the methods."""
    # Arrange
    preset = dataclasses.replace(PRESETS["quick"], alphas=(0.1,), methods=("fedlora", "hierfedlora"))
    results = [
        _result("fedlora", 0, (0.1, 0.2, 0.3), (10.0, 20.0, 30.0)),
        _result("hierfedlora", 0, (0.2, 0.35, 0.4), (5.0, 10.0, 15.0)),
    ]
    # Act
    write_outputs(preset, make_cost_model(6), results, tmp_path)
    # Assert
    assert len(json.loads((tmp_path / "results.json").read_text())) == 2
    with open(tmp_path / "summary.csv", newline="") as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == ["fedlora", "hierfedlora"]
    assert (tmp_path / f"accuracy_{alpha_name(0.1)}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    assert f"**{preset.target_accuracy:.0%}**" in report and "`hierfedlora`" in report
    assert not list(tmp_path.glob(".*tmp*"))


def test_the_report_names_the_host_its_cost_model_was_measured_on(tmp_path):
    """A cost model measured elsewhere (e.g. a committed one) is not called this host's: the report names the
    host in its `measured_on`, and an analytic cost model is not called measured."""
    # Arrange
    preset = dataclasses.replace(PRESETS["quick"], alphas=(0.1,), methods=("fedlora",))
    results = [_result("fedlora", 0, (0.1, 0.3), (10.0, 20.0))]
    measured = dataclasses.replace(make_cost_model(6), measured_on="Example CPU; 2 cores; 2 torch threads")
    analytic = dataclasses.replace(make_cost_model(6), measured_on="analytic (planner.analytic_costs) on phone")
    # Act
    write_outputs(preset, measured, results, tmp_path / "measured")
    write_outputs(preset, analytic, results, tmp_path / "analytic")
    # Assert
    measured_report = (tmp_path / "measured" / "report.md").read_text()
    analytic_report = (tmp_path / "analytic" / "report.md").read_text()
    assert "- Costs: measured by `models/profiling` on Example CPU; 2 cores; 2 torch threads (" in measured_report
    assert "- Costs: analytic (planner.analytic_costs) on phone (" in analytic_report
    assert "this host" not in measured_report.split("## Assumptions")[1].split("## Methods")[0]


def test_true_device_speeds_are_seeded_and_mean_one():
    """The clock's devices differ from the profiles by a seeded factor; sigma 0 is the profiles themselves."""
    # Arrange
    devices = tuple(make_devices(200, seed=1))
    # Act
    first, again = clock_devices_for(devices, 0.3, seed=5), clock_devices_for(devices, 0.3, seed=5)
    other = clock_devices_for(devices, 0.3, seed=6)
    # Assert
    assert first == again and first != other
    ratios = [t.compute_scale / d.compute_scale for t, d in zip(first, devices, strict=True)]
    assert 0.9 < sum(ratios) / len(ratios) < 1.1 and min(ratios) < 0.9 < 1.1 < max(ratios)
    assert clock_devices_for(devices, 0.0, seed=5) == devices


@pytest.mark.slow
def test_a_preset_runs_from_the_cli_resumes_and_calibrates(tmp_path):
    """`hierfedlora experiment --preset-file --workers 2` writes every artefact; a second call, in one process
    with a worker's torch thread count, reuses the finished runs and runs again the one whose folder was removed,
    to the same results bit for bit (a run computes the same in a worker as in the command's own process); the
    built-in `quick` named for the same folder is refused (another preset made it); `hierfedlora calibrate` fits
    the convergence constants to all four runs.

    The preset is `quick` with 16 samples a device, 16-token sequences, 32 evaluation samples and at most 4
    rounds: the same 12 devices, methods and budget, at about half the cost."""
    # Arrange
    from hierfedlora.planner.io import write_json

    out = tmp_path / "quick"
    preset = dataclasses.replace(
        PRESETS["quick"], name="quick-small", samples_per_device=16, max_seq_len=16, eval_samples=32, max_rounds=4
    )
    write_json(tmp_path / "preset.json", preset)
    experiment = [sys.executable, "-m", "hierfedlora.cli", "experiment"]
    command = [*experiment, "--preset-file", str(tmp_path / "preset.json"), "--out", str(out)]
    # Act
    first = subprocess.run([*command, "--workers", "2"], capture_output=True, text=True)
    results = json.loads((out / "results.json").read_text()) if first.returncode == 0 else []
    shutil.rmtree(out / "runs" / "alpha_0.5_seed0" / "hierfedlora", ignore_errors=True)
    threads = threads_per_worker(2, len(os.sched_getaffinity(0)))  # float rounding depends on the thread count
    one_worker = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    second = subprocess.run(command, capture_output=True, text=True, env=one_worker)
    named = subprocess.run([*experiment, "quick", "--out", str(out)], capture_output=True, text=True)
    fitted = tmp_path / "convergence.json"
    calibrated = subprocess.run(
        [sys.executable, "-m", "hierfedlora.cli", "calibrate", str(out), "--out", str(fitted)],
        capture_output=True,
        text=True,
    )
    # Assert
    assert first.returncode == 0, first.stderr[-2000:]
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(r["method"] for r in results) == sorted(preset.methods)
    assert all(r["rounds"] >= 1 and 0 <= r["final_accuracy"] <= 1 for r in results)
    assert all((out / "runs" / "alpha_0.5_seed0" / m / "result.json").exists() for m in preset.methods)
    assert (out / "accuracy_alpha_0.5.png").exists() and (out / "report.md").exists()
    again = json.loads((out / "results.json").read_text())
    assert [{**r, "wall_time_s": 0} for r in again] == [{**r, "wall_time_s": 0} for r in results]
    assert [r["wall_time_s"] for r in again] != [r["wall_time_s"] for r in results]  # one of them did run again
    assert "| alpha_0.5 | fedlora |" in first.stdout
    assert all(r["num_devices"] == 12 and r["tier_mix"] == "paper" for r in results)
    assert named.returncode == 2 and "error: out must be a new folder, or one made with the same preset" in named.stderr
    assert "Traceback" not in named.stderr and read_preset(out / "preset.json") == preset
    assert calibrated.returncode == 0, calibrated.stderr[-2000:]
    assert calibrated.stdout.startswith(f"{len(preset.methods)} runs, {sum(r['rounds'] for r in results)} rounds")
    assert read_json(ConvergenceParams, fitted) != preset.convergence


def test_documented_example_presets_load():
    """Every preset file under docs/presets is a valid preset (the guide's examples stay true)."""
    # Arrange
    from pathlib import Path

    files = sorted((Path(__file__).parents[2] / "docs" / "presets").glob("*.json"))
    # Act
    presets = [read_preset(f) for f in files]
    # Assert
    assert files and all(p.name == f.stem for p, f in zip(presets, files, strict=True))
    assert any(len(p.fleet_sizes) > 1 and len(p.tier_mixes) > 1 for p in presets)


def test_preset_convergence_prior_reaches_the_planner_and_the_report(tmp_path):
    """A preset file's convergence prior and tuning notes reach the planning problem and the report."""
    # Arrange
    from hierfedlora.planner.io import to_dict
    from hierfedlora.planner.types import Fleet
    from hierfedlora.validation.experiments import problem_for

    prior = ConvergenceParams(skew_sensitivity=2.0)
    path = tmp_path / "prior.json"
    tuned = dataclasses.replace(PRESETS["quick"], convergence=prior, tuning_notes=("c chosen from {4, 2}",))
    path.write_text(json.dumps(to_dict(tuned)))
    preset = read_preset(path)
    fleet = Fleet(devices=make_devices(12), class_names=("a", "b", "c", "d"))
    # Act
    problem = problem_for(preset, fleet, make_cost_model(6), seed=0)
    write_outputs(preset, make_cost_model(6), [_result("fedlora", 0, (0.1, 0.3), (10.0, 20.0))], tmp_path / "out")
    # Assert
    assert problem.convergence.skew_sensitivity == 2.0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "skew sensitivity 2" in report and "- Tuning: c chosen from {4, 2}" in report
    assert "No per-method tuning" not in report


def test_a_folder_made_with_another_preset_is_refused_before_anything_runs(tmp_path):
    """Finished runs are reused by folder: other knobs in the same --out would mix results, so they are refused."""
    # Arrange
    from hierfedlora.planner.io import write_json
    from hierfedlora.validation.experiments import run_experiment

    write_json(tmp_path / "preset.json", PRESETS["quick"])
    changed = dataclasses.replace(PRESETS["quick"], learning_rate=0.5, max_rounds=3)
    # Act
    with pytest.raises(InvalidInputError) as error:
        run_experiment(changed, tmp_path)
    # Assert
    (issue,) = error.value.issues
    assert issue.path == "out" and issue.got.endswith("differs in learning_rate, max_rounds")
    assert read_preset(tmp_path / "preset.json") == PRESETS["quick"]  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset.json"]


def test_interpolated_time_to_puts_the_crossing_between_round_ends():
    """Linear between the last round below and the first at or above; the first round keeps its time;
    a crossing after the budget, or none, is None."""
    # Arrange
    from hierfedlora.validation.experiment_report import interpolated_time_to

    run = _result("hierfedlora", 0, (0.1, 0.2, 0.4, 0.5), (10.0, 20.0, 30.0, 40.0))  # budget 30 s
    # Act
    crossing = interpolated_time_to(run, 0.3)
    first = interpolated_time_to(run, 0.05)
    late = interpolated_time_to(run, 0.45)
    never = interpolated_time_to(run, 0.9)
    # Assert
    assert crossing == pytest.approx(25.0)
    assert first == 10.0
    assert late is None and never is None


def test_the_bar_section_gives_the_interpolated_speedup_with_the_target():
    """With the preset's target, each speed-up to it is followed by its interpolated value (here 25 s / 15 s)."""
    # Arrange
    from hierfedlora.validation.experiment_outputs import headline

    results = [
        _result("fedlora", 0, (0.1, 0.2, 0.4), (10.0, 20.0, 30.0)),  # crosses 0.3 at 25 s
        _result("hierfedlora", 0, (0.2, 0.4, 0.5), (10.0, 20.0, 30.0)),  # crosses 0.3 at 15 s
    ]
    # Act
    without = headline(results)
    with_target = headline(results, 0.3)
    # Assert
    assert "interpolated" not in "\n".join(without)
    assert "speed-up to the target vs `fedlora` 1.50x (1/1 seeds) (1.67x interpolated between round ends, 1 seeds)" in (
        "\n".join(with_target)
    )
