"""HetLoRA's rank self-pruning in the runtime: ranks fall, are priced, checkpointed and resumed exactly."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from hierfedlora.runtime.checkpoint import MANIFEST_NAME
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.rank_pruning import RANK_PREFIX, prune_ranks, ranked_plan, ranks_from_tensors
from tests.factories import make_cost_model, make_two_group_plan


def _state(tail: float) -> dict[str, torch.Tensor]:
    """One module of rank 2: component 0 of norm 1, component 1 of norm ``tail``."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, tail], [0.0, 0.0]])
    return {"layers.1.q.lora_A": a, "layers.1.q.lora_B": b, "head.bias": torch.zeros(2)}


def test_a_group_prunes_only_when_its_last_component_is_small(small_fleet):
    """A tail of 0.001 of the norm is pruned at gamma 0.99, a tail of half is kept; a group that sent nothing keeps."""
    # Arrange
    fleet, _ = small_fleet
    plan = ranked_plan(make_two_group_plan(fleet), {0: 2, 1: 2})
    # Act
    small_tail = prune_ranks(plan, [_state(1e-3), _state(0.5)], [True, True], {0: 2, 1: 2}, 8, gamma=0.99)
    absent = prune_ranks(plan, [_state(1e-3), _state(1e-3)], [True, False], {0: 2, 1: 2}, 8, gamma=0.99)
    # Assert
    assert [g.lora_rank for g in plan.groups] == [2, 2]
    assert small_tail == {0: 1, 1: 2}
    assert absent == {0: 1, 1: 2}


def _options(model_dir, rounds: int) -> RunOptions:
    return RunOptions(
        rounds=rounds,
        model=str(model_dir),
        eval_samples=16,
        eval_batch_size=16,
        seed=3,
        aggregation="hetlora",
        hetlora_prune_gamma=0.0,  # prune one component every round
    )


def _tensors(run_dir) -> dict[str, torch.Tensor]:
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    return load_file(run_dir / manifest["tensor_file"])


def test_pruned_ranks_are_trained_priced_checkpointed_and_resumed(tmp_path, small_fleet, minilm_slice_dir):
    """With gamma 0 each group loses a component per round: rank 8 -> 5 after 3 rounds, its traffic falls, the
    global adapters hold only the components round 3 trained (rank 6), and a stop/resume gives the same tensors
    and ranks."""
    # Arrange
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    context = prepare_run(plan, fleet, _options(minilm_slice_dir, 3))
    # Act
    reports = list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 3), tmp_path / "whole", context=context))
    list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 1), tmp_path / "split", context=context))
    list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 3), tmp_path / "split", resume=True, context=context))
    # Assert
    whole, split = _tensors(tmp_path / "whole"), _tensors(tmp_path / "split")
    assert ranks_from_tensors(whole) == {0: 5, 1: 5}
    assert {k for k in whole if k.startswith(RANK_PREFIX)} == {RANK_PREFIX + "0", RANK_PREFIX + "1"}
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)
    a_keys = [k for k in whole if k.endswith("lora_A")]
    assert a_keys and all(float(whole[k][6:].abs().max()) == 0 for k in a_keys)
    assert all(float(whole[k][5].abs().max()) > 0 for k in a_keys)
    uploads = [r.upload_bytes for r in reports]
    assert uploads[0] > uploads[1] > uploads[2]  # rank 8, 7, 6 on the wire
