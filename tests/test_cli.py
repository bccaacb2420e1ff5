"""The CLI as users meet it: --help everywhere, exit codes, one-line errors, no partial output files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hierfedlora.planner.io import write_json
from tests.factories import make_cost_model

COMMANDS = ("profile", "fleet", "plan", "run", "demo", "experiment")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hierfedlora.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-class CSV, a 6-device fleet made from it by the CLI, and a toy cost model."""
    folder = tmp_path_factory.mktemp("cli")
    rows = ["text,label"] + [f"sample {i} of class {i % 3},c{i % 3}" for i in range(90)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    write_json(folder / "cost.json", make_cost_model())
    result = _cli(
        "fleet",
        "--data",
        str(folder / "data.csv"),
        "--devices",
        "6",
        "--alpha",
        "1.0",
        "--out",
        str(folder / "fleet.json"),
    )
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "fleet": folder / "fleet.json", "cost": folder / "cost.json"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    """`hierfedlora COMMAND --help` exits 0 and describes the command."""
    result = _cli(command, "--help")
    assert result.returncode == 0
    assert f"usage: hierfedlora {command}" in result.stdout


def test_plan_writes_a_plan_and_a_summary(files, tmp_path):
    """A good fleet plans: exit 0, a summary on stdout, a plan file that parses."""
    out = tmp_path / "plan.json"
    result = _cli("plan", str(files["fleet"]), "--cost-model", str(files["cost"]), "--groups", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "group  devices" in result.stdout
    assert len(json.loads(out.read_text())["groups"]) == 2


def test_corrupted_fleet_exits_2_naming_the_field(files, tmp_path):
    """A NaN bandwidth and an unknown key: exit 2, both named, no traceback, no output file."""
    # Arrange
    data = json.loads(files["fleet"].read_text())
    data["devices"][1]["uplink_mbps"] = "fast"
    data["devices"][2]["memory"] = 5
    bad = tmp_path / "fleet.json"
    bad.write_text(json.dumps(data))
    out = tmp_path / "plan.json"
    # Act
    result = _cli("plan", str(bad), "--cost-model", str(files["cost"]), "--groups", "2", "--out", str(out))
    # Assert
    assert result.returncode == 2
    assert "fleet.json: devices[1].uplink_mbps must be a finite number > 0; got 'fast'" in result.stderr
    assert "devices[2].memory must be a known field of DeviceProfile" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_truncated_fleet_exits_2(files, tmp_path):
    """Half a JSON file is invalid input, not a crash."""
    bad = tmp_path / "fleet.json"
    bad.write_text(files["fleet"].read_text()[:200])
    result = _cli("plan", str(bad), "--cost-model", str(files["cost"]), "--out", str(tmp_path / "p.json"))
    assert result.returncode == 2
    assert "valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_infeasible_plan_exits_3_with_numbers(files, tmp_path):
    """min_group_size x groups beyond the fleet is infeasible, with the arithmetic shown."""
    out = tmp_path / "plan.json"
    result = _cli(
        "plan",
        str(files["fleet"]),
        "--cost-model",
        str(files["cost"]),
        "--groups",
        "3",
        "--min-group-size",
        "3",
        "--out",
        str(out),
    )
    assert result.returncode == 3
    assert "3 × 3 = 9 > 6 devices" in result.stderr  # noqa: RUF001
    assert not out.exists()


def test_fleet_imports_fedscale_traces(files, tmp_path):
    """FedScale capacity traces (CSV) replace device speeds and links."""
    # Arrange
    trace = tmp_path / "capacity.csv"
    trace.write_text(
        "client_id,computation,communication\n"
        + "\n".join(f"{i},{20 + i},{5000 + 100 * i}" for i in range(1, 9))
        + "\n"
    )
    out = tmp_path / "fleet.json"
    # Act
    result = _cli(
        "fleet",
        "--data",
        str(files["folder"] / "data.csv"),
        "--devices",
        "6",
        "--fedscale-capacity",
        str(trace),
        "--cost-model",
        str(files["cost"]),
        "--out",
        str(out),
    )
    # Assert
    assert result.returncode == 0, result.stderr
    uplinks = {device["uplink_mbps"] for device in json.loads(out.read_text())["devices"]}
    assert uplinks <= {(5000 + 100 * i) * 1024 / 1e6 for i in range(1, 9)}
