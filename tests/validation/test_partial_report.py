"""The partial report of an unfinished experiment folder: whole seeds only, provisional targets, nothing changed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hierfedlora.cli import main
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import write_json
from hierfedlora.planner.sealed import write_sealed_json
from hierfedlora.validation.experiment_outputs import regenerate_command
from hierfedlora.validation.experiment_presets import PRESETS, RunResult
from hierfedlora.validation.partial_report import complete_seeds, finished_runs, write_partial_report
from tests.factories import make_cost_model

METHODS = ("fedlora", "hierfedlora")


def _preset():
    return dataclasses.replace(
        PRESETS["quick"], alphas=(0.5,), seeds=(0, 1, 2), methods=METHODS, target_accuracy=None, target_relative=0.9
    )


def _result(method: str, seed: int, final: float) -> RunResult:
    return RunResult(
        method=method, alpha=0.5, seed=seed, plan_id=f"{method}{seed}", rounds=2, time_budget_s=30.0,
        final_accuracy=final, time_to_target_s=None, traffic_bytes=1_000_000, wall_time_s=1.0, replans=0,
        sim_time_s=(10.0, 20.0), accuracy=(final / 2, final),
    )  # fmt: skip


def _folder(tmp_path, finished: dict[tuple[str, int], float]):
    """An experiment folder as ``run_experiment`` leaves it, with ``finished`` runs (method, seed) -> accuracy."""
    preset = _preset()
    folder = tmp_path / "exp"
    folder.mkdir()
    write_json(folder / "preset.json", preset)
    write_sealed_json(folder / "cost_model.json", make_cost_model())
    settings = {s.seed: s for s in preset.settings()}
    for (method, seed), accuracy in finished.items():
        run = folder / "runs" / settings[seed].name / method
        run.mkdir(parents=True)
        write_sealed_json(run / "result.json", _result(method, seed, accuracy))
    return folder


def test_only_seeds_every_method_finished_enter_and_the_target_comes_from_them(tmp_path):
    folder = _folder(
        tmp_path,
        {("fedlora", 0): 0.40, ("hierfedlora", 0): 0.60, ("fedlora", 1): 0.50, ("hierfedlora", 1): 0.70,
         ("fedlora", 2): 0.99},
    )  # fmt: skip
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    report = write_partial_report(folder)
    assert [s.seed for s in report.included] == [0, 1]
    assert report.left_out == ("alpha_0.5_seed2/fedlora",)
    assert (report.finished, report.total) == (5, 6)
    assert [(r.method, r.seed) for r in report.results] == [(m, s) for s in (0, 1) for m in METHODS]
    summary = json.loads((folder / "partial" / "results.json").read_text())
    assert {(r["method"], r["seed"]) for r in summary} == {(m, s) for s in (0, 1) for m in METHODS}
    text = (folder / "partial" / "report.md").read_text()
    assert "**Partial report**" in text and "5 of 6 runs" in text and "alpha_0.5_seed2/fedlora" in text
    # (T1) from seeds 0 and 1 only: 0.9 x mean(0.60, 0.70) = 58.5%, not moved by seed 2's 99% FedLoRA run
    assert "alpha_0.5 58.5%" in text
    assert (folder / "partial" / "accuracy_alpha_0.5.png").stat().st_size > 0
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and "partial" not in p.parts} == before


def test_no_whole_seed_and_the_experiments_own_folder_are_refused(tmp_path):
    folder = _folder(tmp_path, {("fedlora", 0): 0.4, ("hierfedlora", 1): 0.6})
    with pytest.raises(InvalidInputError, match=r"report.*2 finished runs and no whole seed"):
        write_partial_report(folder)
    assert not (folder / "partial").exists()
    with pytest.raises(InvalidInputError, match="report-out"):
        write_partial_report(folder, folder)
    with pytest.raises(InvalidInputError, match=r"without preset\.json, cost_model\.json"):
        write_partial_report(tmp_path / "nothing")


def test_a_changed_result_is_refused_not_reported(tmp_path):
    folder = _folder(tmp_path, {("fedlora", 0): 0.4, ("hierfedlora", 0): 0.6})
    path = next(folder.rglob("hierfedlora/result.json"))
    path.write_text(path.read_text().replace('"final_accuracy": 0.6', '"final_accuracy": 0.9'))
    with pytest.raises(InvalidInputError, match="content_sha256"):
        finished_runs(_preset(), folder)


def test_complete_seeds_keeps_the_preset_order():
    settings = _preset().settings()
    done = {settings[2]: set(METHODS), settings[0]: set(METHODS), settings[1]: {"fedlora"}}
    assert complete_seeds(done, METHODS) == [settings[2], settings[0]]


def test_cli_writes_it_and_refuses_other_options(tmp_path, capsys):
    folder = _folder(tmp_path, {("fedlora", 0): 0.4, ("hierfedlora", 0): 0.6})
    out = tmp_path / "partial-here"
    assert main(["experiment", "--partial-report", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| alpha_0.5 | hierfedlora | 60.0 |" in printed and "2 of 6 runs finished" in printed
    assert (out / "report.md").is_file()
    assert main(["experiment", "--partial-report", str(folder), "--data", "janeausten"]) == 2
    assert "data" in capsys.readouterr().err


def test_the_regenerate_command_names_the_data_or_the_preset_file():
    assert regenerate_command(PRESETS["long"]) == "hierfedlora experiment long --out <folder>"
    other = dataclasses.replace(PRESETS["long"], data="janeausten")
    assert regenerate_command(other) == "hierfedlora experiment long --data janeausten --out <folder>"
    assert "--preset-file" in regenerate_command(dataclasses.replace(PRESETS["long"], budget_fedlora_rounds=3.0))


def test_the_modules_example_runs():
    import doctest

    from hierfedlora.validation import partial_report

    result = doctest.testmod(partial_report, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
