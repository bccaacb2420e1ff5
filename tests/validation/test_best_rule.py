"""``NAME@best``: resolved per setting to HierFedLoRA's best rule, after the explicit rules, also on resume."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hierfedlora.planner.costs import AGGREGATION_RULES
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import to_dict
from hierfedlora.runtime.checkpoint import CRASH_AFTER_COMMIT_ENV, REPORTS_NAME, read_reports
from hierfedlora.validation.baselines import BaselineSettings
from hierfedlora.validation.experiment_presets import PRESETS, RunResult, read_preset
from hierfedlora.validation.method_rules import best_rule_issue, resolve_best_rule, stage_order
from hierfedlora.validation.rule_report import rule_lines


def _result(method: str, accuracy: float, seed: int = 0, resolved: str | None = None) -> RunResult:
    return RunResult(
        method=method,
        alpha=0.5,
        seed=seed,
        plan_id="p",
        rounds=1,
        time_budget_s=10.0,
        final_accuracy=accuracy,
        time_to_target_s=None,
        traffic_bytes=1,
        wall_time_s=1.0,
        replans=0,
        sim_time_s=(5.0,),
        accuracy=(accuracy,),
        num_devices=6,
        tier_mix="paper",
        resolved_rule=resolved,
    )


def test_best_resolves_to_hierfedloras_argmax_rule_only():
    """The highest final accuracy of plain HierFedLoRA picks the rule; other methods, even better ones, and
    earlier @best results do not count."""
    # Arrange
    results = [
        _result("fedlora@flora", 0.90),
        _result("hierfedlora", 0.30),
        _result("hierfedlora@fedex", 0.42),
        _result("hierfedlora@ffa", 0.41),
        _result("hierfedlora_loop@hetlora", 0.80),
        _result("hierfedlora@best", 0.95, resolved="ffa"),
    ]
    # Act / Assert
    assert resolve_best_rule(results) == "fedex"
    assert resolve_best_rule(results[:2] + results[3:]) == "ffa"


def test_a_tie_goes_to_the_earlier_rule_in_aggregation_rules_order():
    """Equal accuracies: the rule earlier in AGGREGATION_RULES wins, whatever order the results come in."""
    # Arrange
    results = [_result("hierfedlora@hetlora", 0.5), _result("hierfedlora@lora-fair", 0.5), _result("hierfedlora", 0.4)]
    # Act
    rule = resolve_best_rule(results)
    # Assert
    assert AGGREGATION_RULES.index("lora-fair") < AGGREGATION_RULES.index("hetlora")
    assert rule == "lora-fair"
    assert resolve_best_rule([*results, _result("hierfedlora@ffa", 0.5)]) == "ffa"


@pytest.mark.parametrize(
    "methods", [("fedlora", "hierfavg@best"), ("fedlora", "hierfedlora", "hierfavg@best", "hierfedlora@best")]
)
def test_best_without_hierfedlora_under_two_rules_is_refused(methods, tmp_path):
    """A preset (built-in or a file) with @best but HierFedLoRA under fewer than two rules is refused by field."""
    # Arrange
    good = dataclasses.replace(PRESETS["quick"], methods=("fedlora", "hierfedlora", "hierfedlora@ffa", "legend@best"))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**to_dict(good), "methods": list(methods)}))
    # Act
    with pytest.raises(InvalidInputError) as built:
        dataclasses.replace(PRESETS["quick"], methods=methods)
    with pytest.raises(InvalidInputError) as read:
        read_preset(path)
    # Assert
    for caught in (built, read):
        assert [issue.path for issue in caught.value.issues] == ["methods"]
        assert "hierfavg@best" in str(caught.value) and "at least two rules" in str(caught.value)
    assert best_rule_issue(good.methods) is None
    assert stage_order(good.methods[::-1]) == ("hierfedlora@ffa", "hierfedlora", "fedlora", "legend@best")


def test_the_aggregation_preset_is_two_stages():
    """Stage 1: HierFedLoRA and FedLoRA under every rule; stage 2: the other baselines at @best; 34 runs."""
    # Arrange
    preset = PRESETS["aggregation"]
    # Act
    stage2 = [m for m in preset.methods if m.endswith("@best")]
    # Assert
    assert len(preset.methods) * len(preset.settings()) == 34
    assert stage2 == ["hierfavg@best", "legend@best", "hetlora@best", "fedra@best", "fedgsp@best"]
    assert stage_order(preset.methods)[-5:] == tuple(stage2)


def test_the_report_names_the_winner_the_margins_and_the_resolution():
    """Winner and runner-up, HierFedLoRA's best rule over its next and over FedLoRA's best, and the resolution."""
    # Arrange
    results = [
        _result("fedlora", 0.30),
        _result("fedlora@ffa", 0.35),
        _result("hierfedlora", 0.40),
        _result("hierfedlora@flora", 0.45),
        _result("hierfavg@best", 0.44, resolved="flora"),
    ]
    # Act
    lines = rule_lines(results)
    # Assert
    assert lines[2] == (
        "- alpha_0.5: the winner is `hierfedlora@flora` at 45.0%, +1.0 points over the next, `hierfavg@best`; "
        "HierFedLoRA's best rule is `flora` (45.0%), +5.0 points over its next best, `fedavg`, +10.0 points over "
        "FedLoRA's best rule, `ffa` (35.0%); `@best` resolved to `flora` (seed 0)."
    )
    assert rule_lines([_result("fedlora", 0.3), _result("hierfedlora", 0.4)]) == []


_SCRIPT = """
import os, sys
from hierfedlora.planner.io import read_json
from hierfedlora.validation.experiment_presets import ExperimentPreset
from hierfedlora.validation.experiments import run_experiment
from tests.factories import make_cost_model

def progress(line):
    if "@best" in line:  # kill the stage-2 run right after it commits its first round
        os.environ[sys.argv[3]] = "1"

run_experiment(read_json(ExperimentPreset, sys.argv[1]), sys.argv[2], cost_model=make_cost_model(6), progress=progress)
"""


@pytest.mark.slow
def test_a_killed_stage_two_run_resumes_under_the_same_resolved_rule(tmp_path):
    """SIGKILL in hierfavg@best right after its first commit; a second call reads stage 1 from result.json,
    resolves the same rule, resumes the run under it and puts the result in preset order."""
    # Arrange
    preset = dataclasses.replace(
        PRESETS["quick"],
        methods=("fedlora", "hierfavg@best", "hierfedlora", "hierfedlora@ffa"),
        fleet_sizes=(6,),
        num_groups=2,
        samples_per_device=4,
        local_steps=1,
        batch_size=4,
        max_seq_len=8,
        eval_samples=8,
        budget_fedlora_rounds=1.0,
        max_rounds=1,
        plan_time_limit_s=1.0,
        baseline=BaselineSettings(uniform_intra_rounds=2),
    )
    (tmp_path / "preset.in.json").write_text(json.dumps(to_dict(preset)))
    out = tmp_path / "out"
    args = [sys.executable, "-c", _SCRIPT, str(tmp_path / "preset.in.json"), str(out), CRASH_AFTER_COMMIT_ENV]
    # Act
    killed = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    setting = out / "runs" / "alpha_0.5_seed0"
    stage1 = {m: json.loads((setting / m / "result.json").read_text()) for m in ("hierfedlora", "hierfedlora@ffa")}
    from hierfedlora.validation.experiments import run_experiment
    from tests.factories import make_cost_model

    half_done = not (setting / "hierfavg@best" / "result.json").exists()
    results = run_experiment(preset, out, cost_model=make_cost_model(6))
    # Assert
    accuracy = {m: r["final_accuracy"] for m, r in stage1.items()}
    expected = "ffa" if accuracy["hierfedlora@ffa"] > accuracy["hierfedlora"] else "fedavg"  # a tie: fedavg
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert half_done and (setting / "hierfavg@best" / "run" / "checkpoint.json").exists()
    assert [r.method for r in results] == list(preset.methods)
    best = results[1]
    assert best.resolved_rule == expected and best.rounds == 1
    reports = read_reports(setting / "hierfavg@best" / "run" / REPORTS_NAME)
    assert [r.aggregation for r in reports] == [expected]
    assert all(r.resolved_rule is None for r in results if r.method != "hierfavg@best")
    assert {r.method: r.final_accuracy for r in results}["hierfedlora"] == accuracy["hierfedlora"]
    assert f"`@best` resolved to `{expected}` (seed 0)" in (out / "report.md").read_text()
    assert "resolved_rule" in (out / "results.csv").read_text().splitlines()[0]


def test_a_finished_best_run_under_another_rule_is_refused(tmp_path):
    """A stage-2 result.json made under another rule than the one resolved now (stage 1 changed): exit-2 error
    naming `out`, never a result silently mixed in; the same rule reads back as it was."""
    # Arrange
    from hierfedlora.planner.io import write_json
    from hierfedlora.validation.experiment_presets import Setting
    from hierfedlora.validation.experiment_run import _run_one

    write_json(tmp_path / "result.json", _result("hierfavg@best", 0.4, resolved="ffa"))
    setting = Setting(0.5, 6, "paper", 0)

    def read_back(rule):
        return _run_one(PRESETS["quick"], "hierfavg@best", setting, None, None, (), 1.0, tmp_path, None, rule)

    # Act
    with pytest.raises(InvalidInputError) as caught:
        read_back("flora")
    # Assert
    assert [issue.path for issue in caught.value.issues] == ["out"] and "under ffa" in str(caught.value)
    assert read_back("ffa").resolved_rule == "ffa"
