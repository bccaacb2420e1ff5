"""Runs under every aggregation rule: recorded in reports and checkpoints, base deltas applied, saved and resumed."""

from __future__ import annotations

import json

import pytest
import torch

from hierfedlora.models.adapters import initial_adapter_state
from hierfedlora.models.base_delta import applied_base_delta, base_layers
from hierfedlora.planner.errors import InvalidInputError, ResumeMismatchError
from hierfedlora.runtime.checkpoint import MANIFEST_NAME, REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.local_training import evaluate
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.run_start import BASE_PREFIX, GLOBAL_PREFIX
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import committed_tensors


def _options(model_dir, rounds: int, rule: str, **overrides) -> RunOptions:
    return RunOptions(
        rounds=rounds, model=str(model_dir), eval_samples=16, eval_batch_size=16, seed=3, aggregation=rule, **overrides
    )


@pytest.mark.parametrize("rule", ["ffa", "fedex", "flora", "lora-fair", "hetlora"])
def test_every_rule_runs_and_is_recorded(tmp_path, small_fleet, minilm_slice_dir, rule):
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    options = _options(minilm_slice_dir, 1, rule)
    context = prepare_run(plan, fleet, options)
    reports = list(run_plan(plan, fleet, make_cost_model(2), options, tmp_path / "run", context=context))
    assert [r.aggregation for r in reports] == [rule]
    assert [r.aggregation for r in read_reports(tmp_path / "run" / REPORTS_NAME)] == [rule]
    assert json.loads((tmp_path / "run" / MANIFEST_NAME).read_text())["state"]["aggregation"] == rule
    tensors = committed_tensors(tmp_path / "run")
    base = {k for k in tensors if k.startswith(BASE_PREFIX)}
    if rule in ("fedex", "flora"):
        # layers 0 and 1 of the 2-layer slice were trained (depths 1 and 2): every LoRA module got a delta
        assert base == {BASE_PREFIX + m for m in base_layers(context.model.peft_model)}
        assert all(float(tensors[k].abs().max()) > 0 for k in base)
    else:
        assert base == set()
    a_keys = [k for k in tensors if k.endswith("lora_A")]
    if rule == "ffa":  # A never left its seeded initial values
        start = initial_adapter_state(context.model.peft_model, context.model.max_depth, options.seed)
        assert all(torch.equal(tensors[k], start[k.removeprefix(GLOBAL_PREFIX)]) for k in a_keys)
        assert any(float(tensors[k].abs().max()) > 0 for k in tensors if k.endswith("lora_B"))
    if rule == "flora":  # merged into the base: fresh B for the next round
        assert all(float(tensors[k].abs().max()) == 0 for k in tensors if k.endswith("lora_B"))


def test_evaluation_uses_the_checkpointed_base_delta(tmp_path, small_fleet, minilm_slice_dir):
    """FLoRA's global B is zero after a merge, so only the base delta can make the model differ from W0."""
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    options = _options(minilm_slice_dir, 1, "flora", evaluate_groups=False)
    context = prepare_run(plan, fleet, options)
    (report,) = run_plan(plan, fleet, make_cost_model(2), options, tmp_path / "run", context=context)
    tensors = committed_tensors(tmp_path / "run")
    state = {k.removeprefix(GLOBAL_PREFIX): v for k, v in tensors.items() if k.startswith(GLOBAL_PREFIX)}
    delta = {k.removeprefix(BASE_PREFIX): v for k, v in tensors.items() if k.startswith(BASE_PREFIX)}
    model = context.model
    weights_before = {m: layer.weight.detach().clone() for m, (layer, _) in base_layers(model.peft_model).items()}
    forward = context.forward_for(model.max_depth)
    model.set_adapter_state({k: state[k] for k in model.adapter_keys()})
    with applied_base_delta(model.peft_model, delta):
        with_delta, _ = evaluate(forward, context.data.labels, context.eval_rows, batch_size=16)
    without_delta, _ = evaluate(forward, context.data.labels, context.eval_rows, batch_size=16)
    assert with_delta == pytest.approx(report.eval_loss, rel=1e-6)
    assert abs(with_delta - without_delta) > 1e-6
    after = base_layers(model.peft_model)
    assert all(torch.equal(after[m][0].weight, w) for m, w in weights_before.items())  # W0 back bit for bit


def test_a_bad_base_delta_is_refused_and_changes_nothing(small_fleet, minilm_slice_dir):
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    context = prepare_run(plan, fleet, _options(minilm_slice_dir, 1, "fedex"))
    module = next(iter(base_layers(context.model.peft_model)))
    with pytest.raises(InvalidInputError, match="a module that carries LoRA"):
        with applied_base_delta(context.model.peft_model, {"layers.9.nope": torch.zeros(2, 2)}):
            pass
    with pytest.raises(InvalidInputError, match="a tensor of shape"):
        with applied_base_delta(context.model.peft_model, {module: torch.zeros(2, 2)}):
            pass


def test_resume_refuses_another_rule(tmp_path, small_fleet, minilm_slice_dir):
    fleet, _ = small_fleet
    plan = make_two_group_plan(fleet)
    context = prepare_run(plan, fleet, _options(minilm_slice_dir, 1, "fedex"))
    list(
        run_plan(
            plan, fleet, make_cost_model(2), _options(minilm_slice_dir, 1, "fedex"), tmp_path / "r", context=context
        )
    )
    with pytest.raises(ResumeMismatchError) as info:
        list(
            run_plan(
                plan,
                fleet,
                make_cost_model(2),
                _options(minilm_slice_dir, 2, "flora"),
                tmp_path / "r",
                resume=True,
                context=context,
            )
        )
    assert info.value.field == "aggregation"


def test_unknown_rule_is_refused_by_name(minilm_slice_dir):
    with pytest.raises(InvalidInputError, match="aggregation must be one of fedavg, ffa, fedex, flora, lora-fair"):
        _options(minilm_slice_dir, 1, "fedprox")


def test_stop_then_resume_restores_the_base_delta(tmp_path, small_fleet, minilm_slice_dir):
    """FedEx-LoRA stopped after round 1 and resumed ends with the uninterrupted adapters and base delta, bit for bit."""
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    context = prepare_run(plan, fleet, _options(minilm_slice_dir, 3, "fedex"))
    whole = list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 3, "fedex"), tmp_path / "w", context=context))
    list(run_plan(plan, fleet, cost, _options(minilm_slice_dir, 1, "fedex"), tmp_path / "c", context=context))
    resumed = list(
        run_plan(
            plan, fleet, cost, _options(minilm_slice_dir, 3, "fedex"), tmp_path / "c", resume=True, context=context
        )
    )
    assert [r.eval_loss for r in resumed] == [r.eval_loss for r in whole[1:]]
    a, b = committed_tensors(tmp_path / "w"), committed_tensors(tmp_path / "c")
    assert a.keys() == b.keys() and any(k.startswith(BASE_PREFIX) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
