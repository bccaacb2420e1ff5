"""Heterogeneous LoRA in the runtime: rank truncation stays exact, layer sets cache exactly, FedRA runs and resumes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hierfedlora.models.adapters import layer_of, truncate_rank
from hierfedlora.models.catalog import ModelSpec, load_base_model
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.planner import costs
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleet import make_fleet
from hierfedlora.planner.fleets.datasets import read_csv
from hierfedlora.planner.outcomes import Group, Plan, Skew, SolveStatus
from hierfedlora.planner.types import PlanningProblem
from hierfedlora.runtime.aggregation import merge_across_groups
from hierfedlora.runtime.checkpoint import MANIFEST_NAME, REPORTS_NAME, read_reports
from hierfedlora.runtime.clock import global_round_time_s
from hierfedlora.runtime.data import tokenize_texts
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.local_training import train_device
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.prefix_cache import PlainForward, PrefixCache
from hierfedlora.validation.baselines import make_method_plan, method_replanner
from tests.factories import make_cost_model, make_devices

RANK = 3
TEXTS = [f"{w} is a kind of {k} number {i}" for i, (w, k) in enumerate([("dog", "animal"), ("cake", "food")] * 6)]


def _random_state(model: AdaptedModel, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=generator) * 0.1 for k, p in model.trainable_parameters().items()}


@pytest.fixture(scope="module")
def slice_model(request: pytest.FixtureRequest):
    """The 2-layer slice with LoRA dropout on, and 12 tokenized texts."""
    spec = ModelSpec(path=str(request.getfixturevalue("minilm_slice_dir")), num_labels=2, lora_dropout=0.1)
    base, tokenizer = load_base_model(spec, seed=0)
    model = AdaptedModel(base, spec, seed=0)
    data = tokenize_texts(TEXTS, [i % 2 for i in range(len(TEXTS))], tokenizer, 16)
    return model, data


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_rank_truncation_stays_exactly_zero_through_local_training(slice_model, optimizer):
    """A state truncated to rank 3 trains its first 3 components and leaves the rest exactly zero."""
    # Arrange
    model, data = slice_model
    model.set_depth(2)
    start = truncate_rank(_random_state(model, seed=1), RANK)
    # Act
    update = train_device(
        model,
        PlainForward(model, data),
        start,
        torch.arange(len(TEXTS)),
        local_steps=4,
        batch_size=4,
        learning_rate=0.05,
        seed=2,
        optimizer=optimizer,
    )
    # Assert
    lora = [key for key in update.state if layer_of(key) is not None]
    assert len(lora) == 8
    for key in lora:
        tensor, before = update.state[key], start[key]
        kept, beyond = (
            (tensor[:RANK], tensor[RANK:]) if key.endswith("lora_A") else (tensor[:, :RANK], tensor[:, RANK:])
        )
        assert torch.count_nonzero(beyond) == 0, key
        assert not torch.equal(kept, before[:RANK] if key.endswith("lora_A") else before[:, :RANK]), key


def test_merging_truncated_states_is_the_zero_padded_weighted_average(slice_model):
    """Full-rank and rank-3 groups merge as HetLoRA's zero-padding aggregation: the rank-3 factors, padded, averaged."""
    # Arrange
    model, _ = slice_model
    model.set_depth(2)
    full, small = _random_state(model, seed=3), _random_state(model, seed=4)
    sent = {
        k: (v[:RANK] if k.endswith("lora_A") else v[:, :RANK]) if layer_of(k) is not None else v
        for k, v in small.items()
    }
    # Act
    merged = merge_across_groups(_random_state(model, seed=5), [full, truncate_rank(small, RANK)], [3.0, 1.0])
    # Assert
    for key, value in full.items():
        padded = torch.zeros_like(value)
        if key.endswith("lora_A"):
            padded[:RANK] = sent[key]
        elif key.endswith("lora_B"):
            padded[:, :RANK] = sent[key]
        else:
            padded = sent[key]
        torch.testing.assert_close(merged[key], (3.0 * value + padded) / 4.0, atol=1e-7, rtol=0.0)


def test_cached_forward_equals_the_plain_one_on_a_non_contiguous_layer_set(request):
    """Layers (1, 3) of a 4-layer slice: cached loss, gradients and logits equal the plain path's to 1e-5."""
    # Arrange
    spec = ModelSpec(path=str(request.getfixturevalue("minilm_four_layer_dir")), num_labels=2, lora_dropout=0.1)
    base, tokenizer = load_base_model(spec, seed=0)
    model = AdaptedModel(base, spec, seed=0)
    model.set_adapter_state(_random_state(model, seed=6))
    data = tokenize_texts(TEXTS, [i % 2 for i in range(len(TEXTS))], tokenizer, 16)
    model.set_layers((1, 3))
    cache, plain = PrefixCache(model, data).forward_for(model.depth), PlainForward(model, data)
    batch = torch.tensor([5, 0, 7, 2, 11])
    params = model.trainable_parameters()
    results = []
    # Act
    for forward in (plain, cache):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(9)
            loss = forward.loss(batch)
        grads = torch.autograd.grad(loss, list(params.values()))
        results.append((loss.detach(), grads, forward.logits(batch)))
    # Assert
    (plain_loss, plain_grads, plain_logits), (cached_loss, cached_grads, cached_logits) = results
    assert model.depth == 3 and {layer_of(k) for k in params} == {1, 3, None}
    torch.testing.assert_close(cached_loss, plain_loss, atol=1e-5, rtol=0.0)
    torch.testing.assert_close(cached_logits, plain_logits, atol=1e-5, rtol=0.0)
    for ours, theirs in zip(cached_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0.0)


def test_the_clock_charges_what_travels(cost_model):
    """Exchanges and traffic use the bytes of the listed layers at the group's rank; compute stays depth-based."""
    # Arrange
    devices = make_devices(2, seed=1)
    skew = Skew(kl=0.0, l1=0.0, hellinger=0.0)
    sparse = Group(
        group_id=0, device_ids=("d0",), depth=5, intra_rounds=1, local_steps=2, label_skew=skew, layers=(1, 4)
    )
    narrow = Group(group_id=1, device_ids=("d1",), depth=6, intra_rounds=2, local_steps=2, label_skew=skew, lora_rank=2)
    plan = Plan(
        groups=(sparse, narrow),
        predicted_round_time_s=1.0,
        predicted_rounds_to_target=1.0,
        objective_value=1.0,
        dual_bound=1.0,
        status=SolveStatus.OPTIMAL,
        solve_time_s=0.0,
        solver="hand",
        seed=0,
    )
    by_id = {d.device_id: d for d in devices}
    # Act
    timing = global_round_time_s(plan, cost_model, by_id, backhaul_mbps=10.0, intra_latency_s=0.0, global_latency_s=0.0)
    # Assert
    sparse_bytes = 2 * cost_model.adapter_bytes_per_layer + cost_model.head_bytes
    narrow_bytes = round(6 * cost_model.adapter_bytes_per_layer * 2 / 8) + cost_model.head_bytes
    assert [g.upload_bytes for g in timing.groups] == [sparse_bytes, 2 * narrow_bytes]
    step_s = costs.step_time_s(cost_model, compute_scale=devices[0].compute_scale, depth=5, batch_size=plan.batch_size)
    exchange_s = costs.exchange_time_s(cost_model, devices[0], depth=5, latency_s=0.0, num_bytes=sparse_bytes)
    assert timing.groups[0].intra_round_s[0] == pytest.approx(2 * step_s + exchange_s, rel=1e-12)
    assert timing.global_aggregation_s == pytest.approx(2 * 8.0 * max(sparse_bytes, narrow_bytes) / 10e6, rel=1e-12)


@pytest.fixture(scope="module")
def fleet_and_problem(tmp_path_factory: pytest.TempPathFactory):
    """Four devices over a 2-class CSV (12 samples each), and the planning problem of the 2-layer toy costs."""
    folder = tmp_path_factory.mktemp("hetero-data")
    rows = ["text,label"] + [
        f"a {w} is a kind of {label} number {i},{label}"
        for label, words in {"animal": ["dog", "cat", "cow", "wolf"], "food": ["cake", "rice", "soup", "pie"]}.items()
        for w in words
        for i in range(4)
    ]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    fleet = make_fleet(
        read_csv(folder / "data.csv"),
        num_devices=4,
        partition="dirichlet",
        alpha=1.0,
        tier_mix="paper",
        test_fraction=0.25,
        max_samples_per_device=12,
        seed=0,
    )
    problem = PlanningProblem(devices=fleet.devices, cost_model=make_cost_model(2), local_steps=1, batch_size=4)
    return fleet, problem


def _options(model_dir: Path, rounds: int) -> RunOptions:
    return RunOptions(rounds=rounds, model=str(model_dir), eval_samples=8, eval_batch_size=8, seed=3)


def _adapters(run_dir: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    return load_file(run_dir / manifest["tensor_file"])


def test_fedra_runs_with_its_replanner_and_resumes_exactly(tmp_path, fleet_and_problem, minilm_slice_dir):
    """Two FedRA rounds switch plans after round 1; stopped after round 1 and resumed, the run ends bit for bit."""
    # Arrange
    fleet, problem = fleet_and_problem
    plan = make_method_plan("fedra", problem)
    cost = problem.cost_model
    context = prepare_run(plan, fleet, _options(minilm_slice_dir, 2))

    def run(folder: str, rounds: int, resume: bool = False) -> list:
        replanner = method_replanner("fedra", problem, seed=problem.solver.seed)
        options = _options(minilm_slice_dir, rounds)
        return list(
            run_plan(plan, fleet, cost, options, tmp_path / folder, resume=resume, context=context, replanner=replanner)
        )

    # Act
    whole = run("whole", 2)
    run("split", 1)
    run("split", 2, resume=True)
    # Assert
    assert [r.global_round for r in whole] == [1, 2]
    assert whole[0].plan_id == plan.plan_id != whole[1].plan_id
    second = json.loads((tmp_path / "whole" / "plans" / f"{whole[1].plan_id}.json").read_text())
    assert second["parent_plan_id"] == plan.plan_id and second["solver"] == "baseline:fedra"
    a, b = _adapters(tmp_path / "whole"), _adapters(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    split_reports = read_reports(tmp_path / "split" / REPORTS_NAME)
    assert [r.plan_id for r in split_reports] == [r.plan_id for r in whole]
    assert [r.upload_bytes for r in split_reports] == [r.upload_bytes for r in whole]


def test_hetlora_runs_and_a_rank_beyond_the_run_is_refused(tmp_path, fleet_and_problem, minilm_slice_dir):
    """A HetLoRA round runs; a group asking for more rank than the run has is refused before training, by name."""
    # Arrange
    fleet, problem = fleet_and_problem
    plan = make_method_plan("hetlora", problem)
    context = prepare_run(plan, fleet, _options(minilm_slice_dir, 1))
    greedy = dataclasses.replace(plan, groups=(dataclasses.replace(plan.groups[0], lora_rank=16), *plan.groups[1:]))
    # Act
    (report,) = run_plan(
        plan, fleet, problem.cost_model, _options(minilm_slice_dir, 1), tmp_path / "ok", context=context
    )
    with pytest.raises(InvalidInputError) as info:
        list(run_plan(greedy, fleet, problem.cost_model, _options(minilm_slice_dir, 1), tmp_path / "bad"))
    # Assert
    assert 0.0 <= report.eval_accuracy <= 1.0
    assert "groups[0].lora_rank" in [issue.path for issue in info.value.issues]
    assert not (tmp_path / "bad" / REPORTS_NAME).exists()
