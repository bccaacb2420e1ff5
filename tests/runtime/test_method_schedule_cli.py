"""`hierfedlora run` of a FedGSP or FedRA plan follows the method's schedule, as `hierfedlora experiment` does."""

from __future__ import annotations

import argparse
import json
import subprocess

import pytest

from hierfedlora.commands.method_replan import build_method_replanner
from hierfedlora.commands.plan import build_problem
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import read_json, write_json
from hierfedlora.planner.outcomes import Plan
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import PLANS_FOLDER
from hierfedlora.validation.baselines import make_method_plan, method_replanner
from hierfedlora.validation.fedgsp import fedgsp_plan
from tests.factories import make_cost_model, make_round_report
from tests.runtime.runs import cli_run_args as _cli_run

FIELDS = {"num_groups": 2, "local_steps": 1}


def _inputs(tmp_path, small_fleet, method: str):
    """The fleet, cost model, --problem file and round 1's plan of ``method``, as `hierfedlora plan` makes them."""
    _, fleet_path = small_fleet
    cost_path, problem_path, plan_path = tmp_path / "cost.json", tmp_path / "problem.json", tmp_path / "plan.json"
    write_json(cost_path, make_cost_model(2))
    problem_path.write_text(json.dumps(FIELDS))
    problem = build_problem(fleet_path, cost_path, FIELDS)
    write_json(plan_path, make_method_plan(method, problem))
    return fleet_path, cost_path, problem_path, plan_path, problem


def _args(fleet_path, cost_path, problem_path, **flags) -> argparse.Namespace:
    given = {"replan_every": None, "self_calibrate": False, **flags}
    return argparse.Namespace(fleet=fleet_path, cost_model=cost_path, problem=problem_path, **given)


def test_cli_run_of_a_fedgsp_plan_grows_its_groups_as_the_experiment_does(tmp_path, small_fleet, minilm_slice_dir):
    """Round 1: one chain of all four devices; rounds 2 and 3: two chains, the harness's round-2 grouping."""
    # Arrange
    fleet_path, cost_path, problem_path, plan_path, problem = _inputs(tmp_path, small_fleet, "fedgsp")
    out = tmp_path / "run"
    command = [*_cli_run(plan_path, fleet_path, cost_path, minilm_slice_dir, out, 3), "--problem", str(problem_path)]
    # Act
    done = subprocess.run(command, capture_output=True, text=True)
    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    reports = read_reports(out / REPORTS_NAME)
    plans = [read_json(Plan, out / PLANS_FOLDER / f"{r.plan_id}.json") for r in reports]
    assert [len(p.groups) for p in plans] == [1, 2, 2]
    assert all(g.sequential for p in plans for g in p.groups)
    expected = fedgsp_plan(problem, global_round=2)
    assert [g.device_ids for g in plans[1].groups] == [g.device_ids for g in expected.groups]


def test_cli_refuses_a_fedgsp_plan_without_its_most_groups(tmp_path, small_fleet, minilm_slice_dir):
    """Round 1's plan cannot say how far FedGSP grows: no --problem is exit 2 naming it, and no run folder."""
    # Arrange
    fleet_path, cost_path, _, plan_path, _ = _inputs(tmp_path, small_fleet, "fedgsp")
    out = tmp_path / "run"
    # Act
    done = subprocess.run(_cli_run(plan_path, fleet_path, cost_path, minilm_slice_dir, out, 2), capture_output=True)
    # Assert
    assert done.returncode == 2
    assert b"--problem" in done.stderr and b"num_groups" in done.stderr and b"Traceback" not in done.stderr
    assert not out.exists()


def test_a_closed_loop_is_refused_with_a_scheduled_plan(tmp_path, small_fleet):
    """--replan-every or --self-calibrate would swap FedGSP's schedule for HierFedLoRA's plans: refused."""
    # Arrange
    fleet_path, cost_path, problem_path, plan_path, _ = _inputs(tmp_path, small_fleet, "fedgsp")
    plan = read_json(Plan, plan_path)
    # Act / Assert
    for flags in ({"replan_every": 1}, {"self_calibrate": True}):
        with pytest.raises(InvalidInputError) as caught:
            build_method_replanner(_args(fleet_path, cost_path, problem_path, **flags), plan)
        assert [issue.path for issue in caught.value.issues] == ["--" + next(iter(flags)).replace("_", "-")]


def test_a_fedra_plan_redraws_as_the_experiment_does_and_other_plans_get_none(tmp_path, small_fleet):
    """FedRA's CLI replanner draws round 2 from the plan's seed as the harness's does; a HierFAVG plan has none."""
    # Arrange
    fleet_path, cost_path, problem_path, plan_path, problem = _inputs(tmp_path, small_fleet, "fedra")
    plan = read_json(Plan, plan_path)
    hierfavg = make_method_plan("hierfavg", problem)
    # Act
    replanner = build_method_replanner(_args(fleet_path, cost_path, problem_path), plan)
    nothing = build_method_replanner(_args(fleet_path, cost_path, problem_path), hierfavg)
    # Assert
    reports = [make_round_report(plan, 1)]
    ours, theirs = replanner(plan, reports, {}), method_replanner("fedra", problem, seed=plan.seed)(plan, reports, {})
    assert [(g.device_ids, g.layers) for g in ours.groups] == [(g.device_ids, g.layers) for g in theirs.groups]
    assert ours.parent_plan_id == plan.plan_id and replanner.seed == plan.seed
    assert nothing is None
