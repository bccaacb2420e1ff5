"""``method@rule`` plans under its rule: every method records the rule and predicts what the clock charges for it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from hierfedlora.planner.types import PlanningProblem, SolverOptions
from hierfedlora.runtime.clock import global_round_time_s
from hierfedlora.validation.baselines import METHODS, make_method_plan, problem_under_rule
from tests.factories import make_cost_model, make_devices

DENSE = 1_179_648


@pytest.fixture(scope="module")
def problem() -> PlanningProblem:
    """Eight seeded devices of mixed speed and links, two groups, the toy model with its dense bytes."""
    return PlanningProblem(
        devices=make_devices(8, seed=3),
        cost_model=dataclasses.replace(make_cost_model(), dense_bytes_per_layer=DENSE),
        num_groups=2,
        backhaul_mbps=10.0,
        solver=SolverOptions(time_limit_s=10.0, seed=0),
    )


@pytest.mark.parametrize("rule", ["ffa", "fedex", "flora"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_under_a_rule_records_it_and_predicts_the_clock(problem, method, rule):
    """The plan is priced under the rule (the clock under the rule charges its predicted round) and says so."""
    # Arrange
    ruled = problem_under_rule(problem, rule)
    # Act
    plan = make_method_plan(method, ruled)
    timing = global_round_time_s(
        plan,
        ruled.cost_model,
        {d.device_id: d for d in ruled.devices},
        batch_size=ruled.effective_batch_size,
        backhaul_mbps=ruled.backhaul_mbps,
        intra_latency_s=ruled.intra_latency_s,
        global_latency_s=ruled.global_latency_s,
        aggregation=rule,
    )
    # Assert
    assert plan.aggregation == rule
    assert timing.round_s == pytest.approx(plan.predicted_round_time_s, rel=1e-9)
    if method == "fedlora":  # a fixed construction: the rule changes its price, not its depth or tau
        fedavg = make_method_plan(method, problem)
        assert [(g.device_ids, g.depth, g.intra_rounds) for g in plan.groups] == [
            (g.device_ids, g.depth, g.intra_rounds) for g in fedavg.groups
        ]
        assert plan.predicted_round_time_s != fedavg.predicted_round_time_s


def test_problem_under_rule_measures_fedex_dense_bytes_from_the_runs_model(problem, minilm_slice_dir):
    """A cost model written before it recorded the dense bytes gets them from the run's model (query and value
    targets of 384 x 384 float32 each in the packaged model's layers)."""
    from hierfedlora.models.catalog import ModelSpec, load_base_model
    from hierfedlora.models.lora import AdaptedModel

    spec = ModelSpec(path=str(minilm_slice_dir), num_labels=4)
    base, _ = load_base_model(spec, seed=0)
    context = SimpleNamespace(model=AdaptedModel(base, spec, seed=0))
    bare = dataclasses.replace(problem, cost_model=dataclasses.replace(problem.cost_model, dense_bytes_per_layer=None))
    assert problem_under_rule(bare, "fedex", context).cost_model.dense_bytes_per_layer == 2 * 384 * 384 * 4
    assert problem_under_rule(bare, "fedex").cost_model.dense_bytes_per_layer is None  # no model: left to the check
    assert problem_under_rule(bare, "flora", context).cost_model == bare.cost_model  # only FedEx-LoRA needs it
