"""``hierfedlora whatif`` as users meet it: outputs, resuming finished settings, errors naming the field."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from hierfedlora import cli

SMALL = ("--classes", "4", "--samples-per-device", "16", "--set", 'solver.grouping_method="flow"')


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hierfedlora.cli", *args], capture_output=True, text=True)


def test_a_study_writes_csv_json_and_plots_and_a_rerun_reuses_its_rows(tmp_path):
    """Two backhauls x an infeasible and an open round budget: 4 rows, files written; the re-run plans nothing."""
    # Arrange
    out = tmp_path / "study"
    args = ("whatif", "--devices", "20", "--backhaul-mbps", "5,50", "--round-budget-s", "0.5,none", *SMALL)
    # Act
    first = _cli(*args, "--out", str(out))
    second = _cli(*args, "--out", str(out))
    # Assert
    assert first.returncode == 0, first.stderr
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["backhaul_mbps"], r["round_budget_s"], r["status"]) for r in rows] == [
        ("5.0", "0.5", "INFEASIBLE"),
        ("5.0", "", rows[1]["status"]),
        ("50.0", "0.5", "INFEASIBLE"),
        ("50.0", "", rows[3]["status"]),
    ]
    assert rows[0]["conflicting"] == "round_budget" and rows[1]["status"] in ("OPTIMAL", "FEASIBLE")
    assert float(rows[1]["time_to_target_s"]) > float(rows[3]["time_to_target_s"])  # the slower backhaul costs
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 4
    assert (out / "time_to_target.png").stat().st_size > 1000 and (out / "traffic.png").stat().st_size > 1000
    assert second.returncode == 0 and "4 settings (4 reused" in second.stdout


def test_a_bad_axis_value_exits_2_naming_the_flag():
    """A non-number in --backhaul-mbps is refused by the parser with the expected form."""
    result = _cli("whatif", "--backhaul-mbps", "fast")
    assert result.returncode == 2
    assert "--backhaul-mbps" in result.stderr and "comma-separated numbers" in result.stderr


def test_an_unknown_study_field_exits_2_with_a_hint(tmp_path):
    """A study file with a misspelt field names it and suggests the right one."""
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"fleet_size": [80]}))
    result = _cli("whatif", "--study", str(study), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "study.json: fleet_size" in result.stderr and "did you mean 'fleet_sizes'?" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_input_files_and_names_exit_2_before_out_exists(tmp_path):
    """A tier-mix file nested too deep, an unknown mix, a missing cost model and a fleet file that is a folder are
    the user's input, not a setting's outcome: exit 2 naming each axis value and file, and --out is never made."""
    # Arrange
    deep = tmp_path / "mix.json"
    deep.write_text('{"laptop": ' + "[" * 5000 + "]" * 5000 + "}")
    out = tmp_path / "out"
    # Act
    mixes = _cli("whatif", "--devices", "20", "--tiers", f"{deep},bogus,paper", "--cost-model", "default,nope.json",
                 "--out", str(out), *SMALL)  # fmt: skip
    fleet = _cli("whatif", "--fleet", str(tmp_path), "--out", str(out), *SMALL)
    # Assert
    assert mixes.returncode == 2, mixes.stderr
    lines = mixes.stderr.splitlines()
    assert lines[0].startswith("error: tier_mixes[0] (mix.json): (top level) must be JSON nested at most 64")
    assert lines[1].startswith("tier_mixes[1]: tier_mix must be one of 'paper', 'phones', 'mixed'; got 'bogus'")
    assert lines[2].startswith("cost_models[1]: cost_model must be a readable cost model") and len(lines) == 3
    assert fleet.returncode == 2 and "fleet_file" in fleet.stderr and "a file, not a folder" in fleet.stderr
    assert "Traceback" not in mixes.stderr + fleet.stderr
    assert not out.exists()


def test_a_study_killed_with_sigkill_resumes_to_the_same_results(tmp_path):
    """SIGKILL after the 2nd of 6 settings (the fault hook, not a timer): the rows saved so far are whole, no
    results exist yet; the same command again plans only the other 4 and writes the uninterrupted run's results
    (all but the solve's wall time)."""
    import os
    import signal

    from hierfedlora.commands.whatif import CRASH_AFTER_ROWS_ENV

    # Arrange
    args = ("whatif", "--devices", "20,30", "--backhaul-mbps", "5,20,50", *SMALL)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _cli(*args, "--out", str(whole)).returncode == 0
    command = [sys.executable, "-m", "hierfedlora.cli", *args, "--out", str(cut)]
    # Act
    crashed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, CRASH_AFTER_ROWS_ENV: "2"})
    saved_at_crash = sorted(p.name for p in (cut / "rows").iterdir())
    resumed = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert crashed.returncode == -signal.SIGKILL
    assert len(saved_at_crash) == 2 and all(name.endswith(".json") for name in saved_at_crash)
    assert resumed.returncode == 0, resumed.stderr
    assert "6 settings (2 reused" in resumed.stdout

    def rows(folder):
        with (folder / "results.csv").open() as handle:
            return [{k: v for k, v in row.items() if k != "solve_time_s"} for row in csv.DictReader(handle)]

    assert rows(cut) == rows(whole) and len(rows(cut)) == 6
    assert not [p for p in cut.rglob("*.tmp")]


def test_a_second_study_into_a_folder_in_use_exits_2_naming_the_holder(tmp_path):
    """This process holds --out (as a running study would); the CLI, another process, refuses it and writes nothing."""
    import os

    from hierfedlora.runtime.run_folder import lock_folder

    # Arrange
    out = tmp_path / "study"
    with lock_folder(out):
        # Act
        result = _cli("whatif", "--devices", "20", *SMALL, "--out", str(out))
        written = sorted(p.name for p in out.iterdir())
    # Assert
    assert result.returncode == 2
    assert f"is in use by process {os.getpid()}" in result.stderr
    assert written == [".lock"]  # no row, result or plot of the refused study


AXIS = "axis, which sets it (a list of values)"
BAD_SETTINGS = {
    "lcoal_steps=2": "problem.lcoal_steps must be a known field of PlanningProblem; got 'lcoal_steps' "
    "(did you mean 'local_steps'?)",
    "local_steps=-1": "problem.local_steps must be an integer >= 1; got -1",
    "solver.sed=3": "problem.solver.sed must be a known field of SolverOptions; got 'sed' (did you mean 'seed'?)",
    "depth_choices=[0]": "problem.depth_choices must be a non-empty list of integers >= 1, or null; got (0,)",
    "backhaul_mbps=5": f"problem.backhaul_mbps must be left to the study's backhaul_mbps {AXIS}; got 5",
    "convergence.target_loss_gap=2": "problem.convergence.target_loss_gap must be left to the study's "
    f"target_loss_gaps {AXIS}; got 2",
}


@pytest.mark.parametrize(("setting", "line"), BAD_SETTINGS.items())
def test_a_bad_set_exits_2_with_one_line_naming_it_before_anything_is_planned(tmp_path, capsys, setting, line):
    """A misspelt field, a value its rule refuses, or a field an axis sets (it would be overwritten unseen) was an
    INVALID row per setting (or ignored) and exit 0: now exit 2, one line with field, expected and got; no --out."""
    # Arrange
    out = tmp_path / "out"
    # Act
    code = cli.main(["whatif", "--devices", "20", *SMALL, "--set", setting, "--out", str(out)])
    # Assert
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"error: {line}"
    assert not out.exists()


def test_a_well_formed_but_infeasible_set_is_a_row_and_a_calibrated_convergence_file_is_taken(tmp_path, capsys):
    """min_group_size 100 on 20 devices is well-formed: an INFEASIBLE row, exit 0. A --convergence file as calibrate
    writes it (with the reference target_loss_gap) is taken, its target left to the --target-loss-gap axis."""
    # Arrange
    from hierfedlora.planner.io import write_json
    from hierfedlora.planner.types import ConvergenceParams

    convergence = tmp_path / "convergence.json"
    write_json(convergence, ConvergenceParams(reference_rounds=100.0))
    out = tmp_path / "out"
    # Act
    code = cli.main(["whatif", "--devices", "20", *SMALL, "--set", "min_group_size=100", "--convergence",
                     str(convergence), "--target-loss-gap", "0.05", "--out", str(out)])  # fmt: skip
    # Assert
    assert code == 0, capsys.readouterr().err
    [row] = json.loads((out / "results.json").read_text())["rows"]
    assert row["status"] == "INFEASIBLE" and "at least 100 devices" in row["reason"]
    assert row["target_loss_gap"] == 0.05


def test_a_saved_row_changed_before_a_rerun_exits_2_naming_it(tmp_path, capsys):
    """A finished row is reused on a re-run; a number changed in it since (the JSON still valid) was reused into the
    tables as if planned: now exit 2 naming the file, and the earlier results stay as they were."""
    # Arrange
    out = tmp_path / "out"
    args = ["whatif", "--devices", "20", *SMALL, "--out", str(out)]
    assert cli.main(args) == 0
    [row] = (out / "rows").iterdir()
    data = json.loads(row.read_text())
    data["time_to_target_s"] = data["time_to_target_s"] / 2
    row.write_text(json.dumps(data))
    before = (out / "results.csv").read_bytes()
    capsys.readouterr()
    # Act
    code = cli.main(args)
    # Assert
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith(f"error: rows/{row.name}: content_sha256 must be the sha256 of the file's content")
    assert (out / "results.csv").read_bytes() == before
