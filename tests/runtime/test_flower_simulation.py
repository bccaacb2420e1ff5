"""The Flower App and Strategy on Flower's simulation engine: six virtual SuperNodes, a 2-group plan of two depths.

One simulation (Ray actors, started and stopped by Flower) serves both: its ServerApp first runs the App's
main helper (discovery, then the engine with the Flower executor), then ``HierFedLoraStrategy.start`` on the
same nodes. Both must give the in-process engine's adapters bit for bit. Equality is exact, not within a
tolerance: every node trains with the same code (``LocalTrainer``), the same per-device seed, the same start
state (tensors travel as numpy arrays, losslessly) and the same rows in the same order; the frozen-prefix
cache is exact per row, so a node caching only its own rows computes what the driver would.
"""

from __future__ import annotations

import pytest
import torch

from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import run_plan
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.run_start import GLOBAL_PREFIX
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.flower_sim import NUM_NODES, app_settings, initial_adapters, simulate
from tests.runtime.runs import committed_tensors

pytestmark = [pytest.mark.flower, pytest.mark.ray]  # Flower's simulation starts Ray

pytest.importorskip("flwr.simulation")

SEED = 3
ROUNDS = 2


def _final_adapters(run_dir) -> dict[str, torch.Tensor]:
    return {key.removeprefix(GLOBAL_PREFIX): value for key, value in committed_tensors(run_dir).items()}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, six_device_fleet, minilm_slice_dir):
    """Run the in-process engine, then one Flower simulation (App main helper, then the Strategy)."""
    from flwr.app import ArrayRecord
    from flwr.serverapp import ServerApp

    from hierfedlora.runtime.flower import run_server
    from hierfedlora.runtime.flower.strategy import HierFedLoraStrategy

    folder = tmp_path_factory.mktemp("flower-sim")
    fleet, fleet_path = six_device_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    settings = app_settings(
        plan, fleet_path, minilm_slice_dir, rounds=ROUNDS, seed=SEED, **{"run-dir": str(folder / "flower")}
    )
    # batched_devices=1: Flower nodes train device by device, the in-process reference must too (bit for bit)
    options = RunOptions(rounds=ROUNDS, model=str(minilm_slice_dir), eval_samples=16, seed=SEED, batched_devices=1)
    reference = list(run_plan(plan, fleet, cost, options, folder / "inprocess"))
    initial = ArrayRecord.from_torch_state_dict(initial_adapters(minilm_slice_dir, SEED))
    outcomes = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        outcomes["app"] = run_server(grid, context, defaults=settings, cost_model=cost, plan=plan, min_nodes=NUM_NODES)
        strategy = HierFedLoraStrategy(plan, learning_rate=options.learning_rate, seed=SEED)
        outcomes["strategy"] = strategy.start(grid, initial, num_rounds=strategy.num_rounds(ROUNDS), timeout=600)
        outcomes["levels"] = strategy.levels

    simulate(server_app, settings)
    return plan, folder, reference, outcomes


def test_each_node_trains_its_groups_depth_and_the_app_equals_the_in_process_engine(simulated):
    """Discovery finds six nodes; each trains its group's depth; reports and adapters equal the engine's."""
    # Arrange
    plan, folder, reference, outcomes = simulated
    result = outcomes["app"]
    depth_of = {d: g.depth for g in plan.groups for d in g.device_ids}
    group_of = {d: k for k, g in enumerate(plan.groups) for d in g.device_ids}
    # Act
    received = {(r["device_id"], r["lora-depth"], r["group"]) for r in result.replies}
    ours, theirs = _final_adapters(folder / "inprocess"), _final_adapters(folder / "flower")
    # Assert
    assert len(set(result.node_of.values())) == 6 and set(result.node_of) == set(depth_of)
    assert received == {(d, depth_of[d], group_of[d]) for d in depth_of}
    assert {r["lora-depth"] for r in result.replies} == {1, 2}
    assert len(result.replies) == ROUNDS * (3 * 2 + 3 * 1)  # group 0 trains twice per round, group 1 once
    assert [r.global_round for r in read_reports(folder / "flower" / REPORTS_NAME)] == [1, 2]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [r.eval_loss for r in result.reports] == [r.eval_loss for r in reference]
    assert [g.loss for r in result.reports for g in r.groups] == [g.loss for r in reference for g in r.groups]


def test_the_strategy_maps_flower_rounds_to_sub_rounds_and_equals_the_engine(simulated):
    """``strategy.start`` over 2 x 2 Flower rounds gives the engine's final adapters and per-group losses."""
    # Arrange
    _, folder, reference, outcomes = simulated
    result = outcomes["strategy"]
    # Act
    final = dict(result.arrays.to_torch_state_dict())
    ours = _final_adapters(folder / "inprocess")
    metrics = result.train_metrics_clientapp
    # Assert
    assert outcomes["levels"] == 2 and sorted(metrics) == [1, 2, 3, 4]
    assert [("group-1-loss" in metrics[t]) for t in (1, 2, 3, 4)] == [
        True,
        False,
        True,
        False,
    ]  # depth-2 group: level 0
    assert final.keys() == ours.keys() and all(torch.equal(final[k], ours[k]) for k in ours)
    group_losses = [(metrics[t]["group-0-loss"] + metrics[t + 1]["group-0-loss"]) / 2 for t in (1, 3)]
    assert group_losses == pytest.approx([r.groups[0].loss for r in reference], rel=1e-12, abs=0)
