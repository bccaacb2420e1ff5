"""``hierfedlora whatif`` as users meet it: outputs, resuming finished settings, errors naming the field."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

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
