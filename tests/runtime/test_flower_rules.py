"""The Flower App under the other aggregation rules: FedEx-LoRA, FFA-LoRA, FLoRA and HetLoRA equal the engine.

One simulation (six virtual SuperNodes, Ray actors started and stopped by Flower) runs the App's main helper
once per rule on the same nodes, run config ``aggregation`` = the rule (``hetlora-prune-gamma`` 0: a group
prunes a rank component every round, so ranks shrink and truncated states travel). Each run must give the
in-process engine's checkpoint (adapters, FedEx/FLoRA base deltas, HetLoRA ranks) and reports bit for bit,
as ``test_flower_simulation.py`` requires of FedAvg: the nodes train with ``LocalTrainer`` on the base delta
and with the frozen ``lora_A`` the job carries, without the frozen-prefix cache under rules that change the
base, and ``batched_devices=1`` makes the in-process reference train device by device, as nodes do.
"""

from __future__ import annotations

import pytest
import torch

from hierfedlora.runtime.engine import run_plan
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.rank_pruning import RANK_PREFIX
from hierfedlora.runtime.run_start import BASE_PREFIX, GLOBAL_PREFIX
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.flower_sim import NUM_NODES, app_settings, initial_adapters, simulate
from tests.runtime.runs import committed_tensors

pytestmark = [pytest.mark.flower, pytest.mark.ray]  # Flower's simulation starts Ray

pytest.importorskip("flwr.simulation")

SEED = 5
ROUNDS = 2
RULES = ("fedex", "ffa", "flora", "hetlora")
GAMMA = 0.0  # HetLoRA prunes one rank component per group every round


@pytest.fixture(scope="module")
def by_rule(tmp_path_factory, six_device_fleet, minilm_slice_dir):
    """Per rule: the in-process engine's reports, and the App's run (or the error it raised) on one simulation."""
    from flwr.serverapp import ServerApp

    from hierfedlora.runtime.flower import run_server

    folder = tmp_path_factory.mktemp("flower-rules")
    fleet, fleet_path = six_device_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    settings = app_settings(
        plan, fleet_path, minilm_slice_dir, rounds=ROUNDS, seed=SEED, **{"hetlora-prune-gamma": GAMMA}
    )
    references = {}
    for rule in RULES:
        options = RunOptions(
            rounds=ROUNDS,
            model=str(minilm_slice_dir),
            eval_samples=16,
            seed=SEED,
            batched_devices=1,
            aggregation=rule,
            hetlora_prune_gamma=GAMMA,
        )
        references[rule] = list(run_plan(plan, fleet, cost, options, folder / f"inprocess-{rule}"))
    outcomes: dict[str, object] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        for rule in RULES:
            defaults = {**settings, "aggregation": rule, "run-dir": str(folder / f"flower-{rule}")}
            try:
                outcomes[rule] = run_server(
                    grid, context, defaults=defaults, cost_model=cost, plan=plan, min_nodes=NUM_NODES
                )
            except Exception as exc:  # kept for the test's message; the next rule still runs
                outcomes[rule] = exc

    simulate(server_app, settings)
    return {rule: (references[rule], outcomes.get(rule), folder) for rule in RULES}


@pytest.mark.parametrize("rule", RULES)
def test_the_app_under_a_rule_equals_the_in_process_engine_bit_for_bit(by_rule, rule, minilm_slice_dir):
    """Adapters, base deltas, ranks, evaluation and group losses of the App's run equal the engine's exactly."""
    # Arrange
    reference, result, folder = by_rule[rule]
    # Act
    ours, theirs = committed_tensors(folder / f"inprocess-{rule}"), committed_tensors(folder / f"flower-{rule}")
    # Assert
    assert not isinstance(result, Exception), f"the App under {rule} failed: {result!r}"
    assert [r.aggregation for r in result.reports] == [rule] * ROUNDS
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert [r.eval_loss for r in result.reports] == [r.eval_loss for r in reference]
    assert [r.eval_accuracy for r in result.reports] == [r.eval_accuracy for r in reference]
    assert [g.loss for r in result.reports for g in r.groups] == [g.loss for r in reference for g in r.groups]
    base_keys = [k for k in theirs if k.startswith(BASE_PREFIX)]
    assert bool(base_keys) == (rule in ("fedex", "flora"))  # the rules that change the base keep a delta
    assert all(theirs[k].abs().sum() > 0 for k in base_keys)
    if rule == "ffa":  # the nodes kept lora_A frozen: the global A is still the run's seeded draw
        initial = initial_adapters(minilm_slice_dir, SEED)
        a_keys = [k for k in initial if k.endswith("lora_A")]
        assert a_keys and all(torch.equal(theirs[GLOBAL_PREFIX + k], initial[k]) for k in a_keys)
        assert any(not torch.equal(theirs[GLOBAL_PREFIX + k], initial[k]) for k in initial if k.endswith("lora_B"))
    if rule == "hetlora":  # gamma 0 pruned every group's rank each round: the key reached the run
        assert sorted(int(theirs[k]) for k in theirs if k.startswith(RANK_PREFIX)) == [6, 6]
