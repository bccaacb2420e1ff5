"""Runtime fixtures: a small non-IID fleet over a 3-class CSV, shared by the engine and executor tests, and one
uninterrupted CLI run over it that the kill, crash and interrupt tests compare their resumed runs with."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from hierfedlora.planner.fleet import make_fleet, save_fleet
from hierfedlora.planner.fleets.datasets import read_csv
from hierfedlora.planner.io import write_json
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import cli_run_args

CLASSES = {
    "animal": ["dog", "cat", "horse", "cow", "sheep", "goat", "wolf", "bear"],
    "food": ["bread", "cake", "rice", "soup", "cheese", "apple", "pasta", "salad"],
    "plant": ["tree", "fern", "moss", "grass", "oak", "pine", "rose", "tulip"],
}


def build_small_fleet(folder, num_devices: int):
    """``num_devices`` devices over a 3-class CSV of short definitions (non-IID, 12 samples each)."""
    rows = ["text,label"]
    for label, words in CLASSES.items():
        for idx, word in enumerate(words):
            for template in ("a {w} is a kind of {l}", "the {w} is one {l} among many", "{w}: a common {l}"):
                rows.append(f"{template.format(w=word, l=label)} number {idx},{label}")
    path = folder / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    fleet = make_fleet(
        read_csv(path),
        num_devices=num_devices,
        partition="dirichlet",
        alpha=1.0,
        tier_mix="paper",
        test_fraction=0.25,
        max_samples_per_device=12,
        seed=0,
    )
    fleet_path = folder / "fleet.json"
    save_fleet(fleet_path, fleet)
    return fleet, fleet_path


@pytest.fixture(scope="session")
def small_fleet(tmp_path_factory: pytest.TempPathFactory):
    """Four devices over a 3-class CSV of short definitions (non-IID, 12 samples each); the fleet and its file
    (read only: every module shares them)."""
    return build_small_fleet(tmp_path_factory.mktemp("engine-data"), 4)


@pytest.fixture(scope="module")
def six_device_fleet(tmp_path_factory: pytest.TempPathFactory):
    """Six devices like ``small_fleet``'s (executor tests: two groups of three)."""
    return build_small_fleet(tmp_path_factory.mktemp("executor-data"), 6)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WholeRun:
    """An uninterrupted ``hierfedlora run``: its plan and cost model files, its run folder and its rounds."""

    plan_path: Path
    cost_path: Path
    run_dir: Path
    rounds: int


@pytest.fixture(scope="session")
def whole_cli_run(tmp_path_factory: pytest.TempPathFactory, small_fleet, minilm_slice_dir) -> WholeRun:
    """The hand two-group plan over ``small_fleet`` run by ``hierfedlora run`` for 4 rounds (FedAvg, seed 3) in a
    process of its own, once a session: the reference a killed, crashed or interrupted run of the same plan files
    must equal once resumed. Read only."""
    fleet, fleet_path = small_fleet
    folder = tmp_path_factory.mktemp("whole-cli-run")
    plan_path, cost_path, run_dir, rounds = folder / "plan.json", folder / "cost.json", folder / "whole", 4
    write_json(plan_path, make_two_group_plan(fleet))
    write_json(cost_path, make_cost_model(2))
    subprocess.run(
        cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, run_dir, rounds),
        check=True,
        capture_output=True,
    )
    return WholeRun(plan_path=plan_path, cost_path=cost_path, run_dir=run_dir, rounds=rounds)
