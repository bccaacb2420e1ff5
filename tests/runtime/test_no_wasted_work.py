"""No wasted work: no cache at full depth, a bounded cache, one evaluation for one-group plans, inference-mode eval."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hierfedlora.models.catalog import find_layers
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.io import sha256_of, write_json
from hierfedlora.runtime.checkpoint import MANIFEST_NAME, REPORTS_NAME, load_checkpoint, read_reports
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.local_training import evaluate, train_device
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.padding import PROBE_ROWS
from hierfedlora.runtime.prefix_cache import PlainForward, PrefixCache
from hierfedlora.runtime.token_packing import PROBE_ROWS as PACKING_PROBE_ROWS
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import committed_tensors, comparable


def _options(model_dir, rounds: int = 1, **overrides) -> RunOptions:
    return RunOptions(rounds=rounds, model=str(model_dir), eval_samples=16, eval_batch_size=16, seed=3, **overrides)


def _one_group_plan(fleet, depth: int = 2):
    plan = make_two_group_plan(fleet)
    merged = dataclasses.replace(plan.groups[0], device_ids=plan.device_ids, depth=depth, intra_rounds=1, local_steps=2)
    return dataclasses.replace(plan, groups=(merged,))


def test_full_depth_runs_the_plain_forward_and_caches_nothing(small_fleet, minilm_slice_dir):
    """At depth = num_layers (boundary 0) the context hands out the plain forward; the cache stays empty."""
    # Arrange
    fleet, _ = small_fleet
    plan = _one_group_plan(fleet, depth=2)  # the slice has 2 layers
    context = prepare_run(plan, fleet, _options(minilm_slice_dir))
    rows = context.device_rows[plan.device_ids[0]]
    # Act
    full = context.forward_for(2)
    full.loss(rows[:4]).backward()
    shallow = context.forward_for(1)
    shallow.loss(rows[:4])
    # Assert
    assert isinstance(full, PlainForward)
    assert not isinstance(shallow, PlainForward)
    assert isinstance(context.forward_source, PrefixCache)
    row_bytes = context.data.seq_len * context.model.peft_model.config.hidden_size * 4
    assert context.forward_source.cached_bytes == 4 * row_bytes  # only boundary 1's rows


def test_the_cache_bound_comes_from_the_run_options(small_fleet, minilm_slice_dir):
    """prefix_cache_max_mib=0 keeps nothing (rows recomputed, exact); a negative bound is refused by name."""
    # Arrange
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    bounded = prepare_run(plan, fleet, _options(minilm_slice_dir, prefix_cache_max_mib=0))
    rows = bounded.device_rows[plan.device_ids[0]][:4]
    # Act
    forward = bounded.forward_for(1)
    with torch.no_grad():
        first, second = forward.logits(rows), forward.logits(rows)
    # Assert
    assert bounded.forward_source.cached_bytes == 0
    assert torch.equal(first, second)
    with pytest.raises(InvalidInputError, match="prefix_cache_max_mib"):
        _options(minilm_slice_dir, prefix_cache_max_mib=-1)


def _count_eval_forwards(context) -> tuple[list[int], object]:
    """A hook recording the rows of each eval-mode forward of the classifier head (one per evaluated batch)."""
    calls: list[int] = []
    head = context.model.peft_model.base_model.model.classifier

    def hook(module, args, _output):
        if not module.training:
            calls.append(int(args[0].shape[0]))

    return calls, head.register_forward_hook(hook)


def test_a_one_group_plan_evaluates_once_a_round(tmp_path, small_fleet, minilm_slice_dir):
    """One group on its top layers: its model is the global one, evaluated once; the skipped evaluation of the
    group's own state gives exactly the reported figures."""
    # Arrange
    fleet, _ = small_fleet
    plan = _one_group_plan(fleet, depth=1)
    context = prepare_run(plan, fleet, _options(minilm_slice_dir))
    calls, handle = _count_eval_forwards(context)
    try:
        (report,) = list(
            run_plan(plan, fleet, make_cost_model(2), _options(minilm_slice_dir), tmp_path / "r", context=context)
        )
    finally:
        handle.remove()
    _, tensors = load_checkpoint(
        tmp_path / "r",
        expected_plan_id=plan.plan_id,
        expected_fleet_sha256=context.fleet_sha256,
        expected_model_sha256=context.model_sha256,
    )
    state = {k.removeprefix("global."): v for k, v in tensors.items()}
    forward = context.forward_for(1)
    context.model.set_adapter_state({key: state[key] for key in context.model.adapter_keys()})
    # Act
    loss, accuracy = evaluate(forward, context.data.labels, context.eval_rows, batch_size=5)
    # Assert
    # 16 evaluation rows in one batch of 16, once; the rest are the padding probe's and the token-packing
    # probe's two forwards each, of a few rows
    assert calls.count(16) == 1 and len(calls) == 5 and max(calls[:4]) <= max(PROBE_ROWS, PACKING_PROBE_ROWS)
    assert accuracy == report.groups[0].accuracy == report.eval_accuracy
    assert loss == pytest.approx(report.eval_loss, rel=1e-6)


def test_a_round_ending_past_the_budget_is_not_trained(tmp_path, small_fleet, minilm_slice_dir):
    """``stop_past_s``: the rounds ending within the budget, equal to an unbudgeted run's bit for bit, and
    nothing past it committed; a resume stops at once; a budget before round 1's end still trains round 1."""
    # Arrange
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    context = prepare_run(plan, fleet, _options(minilm_slice_dir))
    whole = list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 4), tmp_path / "whole", context=context))
    budget = (whole[1].sim_time_s + whole[2].sim_time_s) / 2  # rounds 1 and 2 end within it, round 3 past it
    # Act
    cut = list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 4), tmp_path / "cut", context=context,
                        stop_past_s=budget))  # fmt: skip
    resumed = list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 4), tmp_path / "cut", resume=True,
                            context=context, stop_past_s=budget))  # fmt: skip
    early = list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 4), tmp_path / "early", context=context,
                          stop_past_s=whole[0].sim_time_s / 2))  # fmt: skip
    # Assert
    assert [r.global_round for r in cut] == [1, 2] and resumed == []
    assert [comparable(r) for r in read_reports(tmp_path / "cut" / REPORTS_NAME)] == [comparable(r) for r in whole[:2]]
    assert json.loads((tmp_path / "cut" / MANIFEST_NAME).read_text())["tensor_file"].startswith("checkpoint-000002-")
    tensors = committed_tensors(tmp_path / "cut")
    two = list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 2), tmp_path / "two", context=context))
    assert len(two) == 2
    assert all(torch.equal(tensors[k], v) for k, v in committed_tensors(tmp_path / "two").items())
    assert [r.global_round for r in early] == [1]


def test_training_after_an_inference_mode_evaluation_uses_the_cached_rows(small_fleet, minilm_slice_dir):
    """States first computed under inference mode (evaluation) serve training afterwards, with gradients."""
    # Arrange
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    context = prepare_run(plan, fleet, _options(minilm_slice_dir))
    device = plan.device_ids[0]
    rows = context.device_rows[device]
    forward = context.forward_for(1)
    start = context.model.get_adapter_state()
    evaluate(forward, context.data.labels, rows, batch_size=64)  # caches every row of the device
    _, layers = find_layers(context.model)
    seen: list[int] = []
    handle = layers[0].register_forward_hook(lambda _m, _a, out: seen.append(out.shape[0]))
    # Act
    try:
        update = train_device(
            context.model, forward, start, rows, local_steps=2, batch_size=4, learning_rate=1e-2, seed=1
        )
    finally:
        handle.remove()
    # Assert
    assert seen == []  # the frozen layer never ran again: training read the states cached by evaluation
    assert any(not torch.equal(update.state[k], start[k]) for k in start)


def _cli(tmp_path, small_fleet, model_dir, *extra: str) -> subprocess.CompletedProcess:
    fleet, fleet_path = small_fleet
    plan_path, cost_path = tmp_path / "plan.json", tmp_path / "cost.json"
    cost = dataclasses.replace(make_cost_model(2), batch_size=4, seq_len=16)
    write_json(plan_path, dataclasses.replace(_one_group_plan(fleet, depth=1), cost_model_sha256=sha256_of(cost)))
    write_json(cost_path, cost)
    command = [sys.executable, "-m", "hierfedlora.cli", "run", str(plan_path), "--fleet", str(fleet_path)]
    command += ["--cost-model", str(cost_path), "--rounds", "1", "--out", str(tmp_path / "run"), "--model"]
    command += [str(model_dir), "--eval-samples", "16", *extra]
    return subprocess.run(command, capture_output=True, text=True)


def test_cli_refuses_a_run_the_cost_model_does_not_price(tmp_path, small_fleet, minilm_slice_dir):
    """A sequence length and LoRA rank other than the cost model's: exit 2, one line naming both, no run folder."""
    # Act
    done = _cli(tmp_path, small_fleet, minilm_slice_dir, "--max-seq-len", "12", "--lora-rank", "4")
    # Assert
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "must be" in line]
    assert len(lines) == 1 and "max_seq_len, lora_rank" in lines[0] and "seq_len 16, lora_rank 8" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_cli_names_each_bad_memory_bound(tmp_path, small_fleet, minilm_slice_dir):
    """--prefix-cache-max-mib -1 and --batch-memory-mib 0: exit 2, one line for each field, no run folder."""
    # Act
    done = _cli(tmp_path, small_fleet, minilm_slice_dir, "--prefix-cache-max-mib", "-1", "--batch-memory-mib", "0")
    # Assert
    assert done.returncode == 2, done.stderr
    assert "prefix_cache_max_mib must be" in done.stderr and "batch_memory_mib must be" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_cli_run_options_reach_the_run(tmp_path, small_fleet, minilm_slice_dir):
    """Seq length and rank default to the cost model's (else exit 2); --no-group-eval drops group accuracies;
    a mismatch can be allowed; --batch-memory-mib 1 leaves room for one device a chunk; --no-token-packing turns
    packing off, to the same losses."""
    # Act
    done = _cli(
        tmp_path, small_fleet, minilm_slice_dir, "--no-group-eval", "--eval-batch-size", "8", "--batched-devices", "4"
    )
    small_chunks = ("--lora-rank", "4", "--allow-cost-mismatch", "--batch-memory-mib", "1")
    allowed = _cli(tmp_path / "b", small_fleet, minilm_slice_dir, *small_chunks)
    unpacked = _cli(
        tmp_path / "c", small_fleet, minilm_slice_dir, "--no-group-eval", "--eval-batch-size", "8", "--batched-devices",
        "4", "--no-token-packing",
    )  # fmt: skip
    # Assert
    assert done.returncode == 0, done.stderr
    assert "token packing on" in done.stderr
    assert unpacked.returncode == 0, unpacked.stderr
    assert "token packing off" in unpacked.stderr
    (plain,) = read_reports(tmp_path / "c" / "run" / REPORTS_NAME)
    (report,) = read_reports(tmp_path / "run" / REPORTS_NAME)
    assert report.eval_loss == pytest.approx(plain.eval_loss, abs=1e-6)  # the same values, packed or not
    assert report.groups[0].accuracy is None
    assert len(set(report.measured_step_s.values())) == 1  # the group's 4 devices trained as one batch
    assert allowed.returncode == 0, allowed.stderr
    assert "cost-model mismatch allowed" in allowed.stderr and "lora_rank" in allowed.stderr
    (small,) = read_reports(tmp_path / "b" / "run" / REPORTS_NAME)
    assert len(set(small.measured_step_s.values())) == len(small.measured_step_s) > 1  # one device a chunk
    manifest = json.loads((tmp_path / "b" / "run" / MANIFEST_NAME).read_text())
    tensors = load_file(tmp_path / "b" / "run" / manifest["tensor_file"])
    ranks = {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A")}
    assert ranks == {4}
