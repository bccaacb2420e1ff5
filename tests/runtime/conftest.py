"""Runtime fixtures: a small non-IID fleet over a 3-class CSV, shared by the engine and executor tests."""

from __future__ import annotations

import pytest

from hierfedlora.planner.fleet import make_fleet, save_fleet
from hierfedlora.planner.fleets.datasets import read_csv

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


@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory: pytest.TempPathFactory):
    """Four devices over a 3-class CSV of short definitions (non-IID, 12 samples each); the fleet and its file."""
    return build_small_fleet(tmp_path_factory.mktemp("engine-data"), 4)


@pytest.fixture(scope="module")
def six_device_fleet(tmp_path_factory: pytest.TempPathFactory):
    """Six devices like ``small_fleet``'s (executor tests: two groups of three)."""
    return build_small_fleet(tmp_path_factory.mktemp("executor-data"), 6)
