"""`hierfedlora plan --aggregation` prices a rule into the plan; `hierfedlora run` uses it, and refuses another."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from hierfedlora import cli
from hierfedlora.commands.run import run_aggregation
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import read_json, write_json
from hierfedlora.planner.outcomes import Plan
from tests.factories import make_cost_model, make_two_group_plan

DENSE = 1_179_648


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-device fleet made by the CLI, a toy cost model with the dense bytes, and one without."""
    folder = tmp_path_factory.mktemp("cli-aggregation")
    rows = ["text,label"] + [f"sample {i} of class {i % 3},c{i % 3}" for i in range(90)]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    write_json(folder / "cost.json", dataclasses.replace(make_cost_model(), dense_bytes_per_layer=DENSE))
    write_json(folder / "old_cost.json", make_cost_model())
    fleet = folder / "fleet.json"
    assert cli.main(["fleet", "--data", str(folder / "data.csv"), "--devices", "6", "--out", str(fleet)]) == 0
    return {"folder": folder, "fleet": fleet, "cost": folder / "cost.json", "old_cost": folder / "old_cost.json"}


def _plan(files: dict[str, Path], out: Path, *extra: str, cost: str = "cost") -> int:
    args = ["plan", str(files["fleet"]), "--cost-model", str(files[cost]), "--groups", "2", "--out", str(out)]
    return cli.main([*args, *extra])


def test_plan_aggregation_prices_the_rule_and_says_so(files, tmp_path, capsys):
    """The flag reaches the planner: the plan records the rule, the summary names it, and FLoRA's stacked
    download makes the same plan's traffic larger than FedAvg's."""
    assert _plan(files, tmp_path / "flora.json", "--aggregation", "flora", "--depths", "2", "--intra-rounds", "1") == 0
    shown = capsys.readouterr().out
    assert _plan(files, tmp_path / "fedavg.json", "--depths", "2", "--intra-rounds", "1") == 0
    flora, fedavg = read_json(Plan, tmp_path / "flora.json"), read_json(Plan, tmp_path / "fedavg.json")
    assert (flora.aggregation, fedavg.aggregation) == ("flora", "fedavg")
    assert "aggregation flora" in shown
    assert [g.device_ids for g in flora.groups] == [g.device_ids for g in fedavg.groups]
    assert flora.predicted_traffic_bytes > fedavg.predicted_traffic_bytes
    assert flora.predicted_round_time_s > fedavg.predicted_round_time_s


def test_plan_refuses_an_unknown_rule_and_fedex_without_dense_bytes(files, tmp_path, capsys):
    capsys.readouterr()
    assert _plan(files, tmp_path / "a.json", "--aggregation", "fedprox") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "aggregation must be one of fedavg, ffa, fedex, flora" in error
    assert _plan(files, tmp_path / "b.json", "--aggregation", "fedex", cost="old_cost") == 2
    assert "cost_model.dense_bytes_per_layer must be" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()


def test_run_refuses_another_rule_than_the_plans(files, tmp_path, capsys):
    """Exit 2 and one line naming --aggregation, before anything is loaded or written."""
    assert _plan(files, tmp_path / "flora.json", "--aggregation", "flora") == 0
    capsys.readouterr()
    out = tmp_path / "run"
    args = ["run", str(tmp_path / "flora.json"), "--fleet", str(files["fleet"]), "--cost-model", str(files["cost"])]
    code = cli.main([*args, "--rounds", "1", "--out", str(out), "--aggregation", "fedavg"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1
    assert "--aggregation must be the rule flora.json was priced under, 'flora'" in error
    assert not out.exists()


def test_a_run_takes_the_plans_rule_and_a_fedavg_plan_any(files, caplog):
    """No flag: the plan's rule. A FedAvg-priced plan (as every plan written before plans recorded a rule) runs
    under another rule with a warning; a plan priced under another rule refuses it."""
    fleet = SimpleNamespace(devices=[SimpleNamespace(device_id=f"d{i}") for i in range(4)])
    fedavg = make_two_group_plan(fleet)
    flora = dataclasses.replace(fedavg, aggregation="flora")
    path = files["folder"] / "plan.json"
    assert run_aggregation(None, flora, path) == "flora"
    assert run_aggregation("flora", flora, path) == "flora"
    assert run_aggregation(None, fedavg, path) == "fedavg"
    assert run_aggregation("fedex", fedavg, path) == "fedex"
    assert "priced under fedavg and runs under fedex" in caplog.text
    refused = re.escape("--aggregation must be the rule plan.json was priced under, 'flora'")
    with pytest.raises(InvalidInputError, match=refused):
        run_aggregation("ffa", flora, path)


def test_the_engine_refuses_a_plan_priced_under_another_rule(tmp_path):
    """The library too: ``run_plan`` refuses before it creates the run folder."""
    from hierfedlora.runtime.engine import run_plan
    from hierfedlora.runtime.options import RunOptions

    fleet = SimpleNamespace(devices=[SimpleNamespace(device_id=f"d{i}") for i in range(4)])
    plan = dataclasses.replace(make_two_group_plan(fleet), aggregation="fedex")
    runs = run_plan(plan, fleet, make_cost_model(), RunOptions(rounds=1, aggregation="flora"), tmp_path / "run")
    with pytest.raises(InvalidInputError, match="aggregation must be the rule the plan was priced under, 'fedex'"):
        next(runs)
    assert not (tmp_path / "run").exists()


def test_whatif_prices_the_rule_set_on_its_problem(tmp_path):
    """`whatif --set aggregation=flora` shares the planner's settings: the same fleet moves FLoRA's stacked bytes."""
    rows = {}
    for rule in ("fedavg", "flora"):
        out = tmp_path / rule
        args = ["whatif", "--devices", "12", "--network", "4g", "--set", f"aggregation={rule}", "--out", str(out)]
        assert cli.main(args) == 0
        data = json.loads((out / "results.json").read_text())
        assert data["study"]["problem"]["aggregation"] == rule
        rows[rule] = data["rows"][0]
    assert rows["flora"]["device_traffic_bytes"] > rows["fedavg"]["device_traffic_bytes"]
    assert rows["flora"]["round_time_s"] > rows["fedavg"]["round_time_s"]
