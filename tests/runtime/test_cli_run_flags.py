"""`hierfedlora run`'s loop and Ray flags are checked whether or not the flag that uses them is given."""

from __future__ import annotations

import pytest

from hierfedlora import cli
from hierfedlora.planner.io import write_json
from tests.factories import make_cost_model, make_two_group_plan

BAD = {
    ("--probe-after", "-1"): "command line: --probe-after must be an integer >= 1; got -1",
    ("--probe-groups", "0"): "command line: --probe-groups must be an integer >= 1; got 0",
    ("--absent-rounds", "0"): "command line: --absent-rounds must be an integer >= 1; got 0",
    ("--prior-weight", "nan"): "command line: --prior-weight must be a finite number >= 0; got nan",
    ("--prior-weight", "-1"): "command line: --prior-weight must be a finite number >= 0; got -1.0",
    ("--ray-actors", "0"): "--executor must be ray when --ray-actors is given; got 'inprocess'",
}


@pytest.mark.parametrize(("flag", "line"), BAD.items(), ids=[f"{f}={v}" for f, v in BAD])
def test_a_bad_flag_exits_2_before_out_even_where_unused(tmp_path, capsys, small_fleet, minilm_slice_dir, flag, line):
    """Without --self-calibrate / --replan-every / --executor ray these values were taken silently (exit 0, the
    flag ignored; --ray-actors 0 counted as absent): now exit 2, one line naming the flag, and no --out."""
    # Arrange
    fleet, fleet_path = small_fleet
    plan_path, cost_path, out = tmp_path / "plan.json", tmp_path / "cost.json", tmp_path / "run"
    write_json(plan_path, make_two_group_plan(fleet))
    write_json(cost_path, make_cost_model(2))
    args = ["run", str(plan_path), "--fleet", str(fleet_path), "--cost-model", str(cost_path), "--rounds", "1"]
    args += ["--model", str(minilm_slice_dir), "--allow-cost-mismatch", *flag, "--out", str(out)]
    # Act
    code = cli.main(args)
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == f"error: {line}"
    assert not out.exists()
