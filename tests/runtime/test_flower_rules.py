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

import json

import pytest
import torch
from safetensors.torch import load_file

from hierfedlora.runtime.checkpoint import MANIFEST_NAME
from hierfedlora.runtime.engine import run_plan
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.rank_pruning import RANK_PREFIX
from hierfedlora.runtime.run_start import BASE_PREFIX, GLOBAL_PREFIX
from tests.factories import make_cost_model, make_two_group_plan

pytestmark = pytest.mark.flower

flwr_simulation = pytest.importorskip("flwr.simulation")

SEED = 5
ROUNDS = 2
RULES = ("fedex", "ffa", "flora", "hetlora")
GAMMA = 0.0  # HetLoRA prunes one rank component per group every round


def _checkpoint(run_dir) -> dict[str, torch.Tensor]:
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    return load_file(run_dir / manifest["tensor_file"])


def _initial_state(model_dir) -> dict[str, torch.Tensor]:
    """The seeded adapters every run of this module starts from (``runtime.run_start``)."""
    from hierfedlora.models.adapters import initial_adapter_state
    from hierfedlora.models.catalog import ModelSpec
    from hierfedlora.models.lora import load_adapted_model

    model, _ = load_adapted_model(ModelSpec(path=str(model_dir), num_labels=3), seed=SEED)
    return initial_adapter_state(model.peft_model, model.max_depth, SEED)


@pytest.fixture(scope="module")
def by_rule(tmp_path_factory, six_device_fleet, minilm_slice_dir):
    """Per rule: the in-process engine's reports, and the App's run (or the error it raised) on one simulation."""
    from flwr.serverapp import ServerApp

    from hierfedlora.runtime.flower import make_client_app, run_server

    folder = tmp_path_factory.mktemp("flower-rules")
    fleet, fleet_path = six_device_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    settings = {
        "rounds": ROUNDS,
        "seed": SEED,
        "model": str(minilm_slice_dir),
        "fleet-file": str(fleet_path),
        "eval-samples": 16,
        "batch-size": plan.batch_size,
        "timeout-s": 600.0,  # a safety cap: discovery on a loaded 2-core host took over 120 s
        "hetlora-prune-gamma": GAMMA,
    }
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
                outcomes[rule] = run_server(grid, context, defaults=defaults, cost_model=cost, plan=plan, min_nodes=6)
            except Exception as exc:  # kept for the test's message; the next rule still runs
                outcomes[rule] = exc

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2, "num_gpus": 0}}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_worker_niceness", "0")  # the nodes keep the test's priority (Ray renices workers by 15)
        env.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        flwr_simulation.run_simulation(server_app, make_client_app(defaults=settings), 6, backend_config=backend)
    return {rule: (references[rule], outcomes.get(rule), folder) for rule in RULES}


@pytest.mark.parametrize("rule", RULES)
def test_the_app_under_a_rule_equals_the_in_process_engine_bit_for_bit(by_rule, rule, minilm_slice_dir):
    """Adapters, base deltas, ranks, evaluation and group losses of the App's run equal the engine's exactly."""
    # Arrange
    reference, result, folder = by_rule[rule]
    # Act
    ours, theirs = _checkpoint(folder / f"inprocess-{rule}"), _checkpoint(folder / f"flower-{rule}")
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
        initial = _initial_state(minilm_slice_dir)
        a_keys = [k for k in initial if k.endswith("lora_A")]
        assert a_keys and all(torch.equal(theirs[GLOBAL_PREFIX + k], initial[k]) for k in a_keys)
        assert any(not torch.equal(theirs[GLOBAL_PREFIX + k], initial[k]) for k in initial if k.endswith("lora_B"))
    if rule == "hetlora":  # gamma 0 pruned every group's rank each round: the key reached the run
        assert sorted(int(theirs[k]) for k in theirs if k.startswith(RANK_PREFIX)) == [6, 6]
