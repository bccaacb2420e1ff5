"""HetLoRA and FedRA as plans: capability classes, ranks and layer sets, and FedRA's seeded per-round re-allocation."""

from __future__ import annotations

import dataclasses
import doctest
import itertools

import pytest

import hierfedlora.validation.heterogeneous as heterogeneous_module
from hierfedlora.planner.checks import device_round_times_s
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.outcomes import GroupRoundResult, RoundReport
from hierfedlora.planner.plan_checks import check_plan_groups
from hierfedlora.planner.types import PlanningProblem, SolverOptions
from hierfedlora.validation.baselines import METHODS, describe_method, make_method_plan, method_replanner
from hierfedlora.validation.heterogeneous import FedraReplanner, capability_classes, fedra_plan
from tests.factories import make_cost_model, make_devices

NUM_LAYERS = 6


@pytest.fixture
def problem() -> PlanningProblem:
    """Nine seeded devices of mixed speed and links, the toy 6-layer model (LoRA rank 8)."""
    return PlanningProblem(
        devices=make_devices(9, seed=3),
        cost_model=make_cost_model(NUM_LAYERS),
        num_groups=2,
        solver=SolverOptions(time_limit_s=10.0, seed=0),
    )


def _report(plan_id: str, global_round: int) -> RoundReport:
    result = GroupRoundResult(group_id=0, loss=1.0, accuracy=None, upload_bytes=0, download_bytes=0, sim_time_s=1.0)
    return RoundReport(
        plan_id=plan_id,
        global_round=global_round,
        sim_time_s=1.0,
        wall_time_s=1.0,
        groups=(result,),
        eval_loss=1.0,
        eval_accuracy=0.5,
    )


def test_capability_classes_are_ordered_fastest_first_and_cover_every_device(problem):
    """Every device in one class; every device of a class is at least as fast as every device of the next."""
    # Arrange
    round_s = device_round_times_s(problem)[:, -1]
    # Act
    classes = capability_classes(problem)
    # Assert
    assert sorted(i for members in classes for i in members) == list(range(len(problem.devices)))
    assert 1 <= len(classes) <= 3
    for faster, slower in itertools.pairwise(classes):
        assert max(round_s[list(faster)]) < min(round_s[list(slower)])


def test_hetlora_gives_ranks_by_class_at_full_depth_and_passes_the_plan_checks(problem):
    """Fastest class full rank (null), then 4 and 2 of rank 8; full depth, intra_rounds 1; the checks find nothing."""
    # Arrange / Act
    plan = make_method_plan("hetlora", problem)
    # Assert
    classes = capability_classes(problem)
    assert [g.device_ids for g in plan.groups] == [
        tuple(problem.devices[i].device_id for i in members) for members in classes
    ]
    assert [g.lora_rank for g in plan.groups] == [None, 4, 2][: len(classes)]
    assert all(g.depth == NUM_LAYERS and g.intra_rounds == 1 and g.layers is None for g in plan.groups)
    assert check_plan_groups(plan, num_layers=NUM_LAYERS, full_rank=8) == []
    assert "no self-pruning" in plan.reason


def test_fedra_gives_each_device_its_own_consistent_layer_set(problem):
    """One group per device; layers counted by class (6, 3, 1); depth = L - min(layers); the checks find nothing."""
    # Arrange
    class_of = {i: c for c, members in enumerate(capability_classes(problem)) for i in members}
    # Act
    plan = make_method_plan("fedra", problem)
    # Assert
    assert [g.device_ids for g in plan.groups] == [(d.device_id,) for d in problem.devices]
    assert [len(g.layers) for g in plan.groups] == [(6, 3, 1)[class_of[i]] for i in range(len(problem.devices))]
    assert all(g.intra_rounds == 1 and g.depth == NUM_LAYERS - g.layers[0] for g in plan.groups)
    assert check_plan_groups(plan, num_layers=NUM_LAYERS, full_rank=8) == []
    assert plan.parent_plan_id is None


def test_fedra_draws_from_the_layers_every_device_holds(problem):
    """With a device that holds depth 2 at most, every layer set lies in the top 2 layers and the reason says why."""
    # Arrange: depth 2 needs about 197 MB, depth 3 about 232 MB
    devices = (dataclasses.replace(problem.devices[0], memory_bytes=200_000_000), *problem.devices[1:])
    small = dataclasses.replace(problem, devices=devices)
    # Act
    plan = make_method_plan("fedra", small)
    # Assert
    assert all(set(g.layers) <= {4, 5} for g in plan.groups)
    assert "deepest every device holds" in plan.reason


def test_fedra_replanner_is_deterministic_and_reallocates_every_round(problem):
    """Same seed, same plans; each round's plan descends from the one in force and changes some device's layers."""
    # Arrange
    first = make_method_plan("fedra", problem)
    replanner, again = method_replanner("fedra", problem, seed=0), method_replanner("fedra", problem, seed=0)
    plans, reports = [first], []
    # Act
    for global_round in (1, 2, 3):
        reports.append(_report(plans[-1].plan_id, global_round))
        plans.append(replanner(plans[-1], reports, {p.plan_id: p for p in plans}))
    repeated = again(plans[1], reports[:2], {})
    other_seed = FedraReplanner(problem, seed=1)(plans[1], reports[:2], {})
    # Assert
    allocations = [tuple(g.layers for g in p.groups) for p in plans]
    assert all(a != b for a, b in itertools.pairwise(allocations))
    assert [p.parent_plan_id for p in plans[1:]] == [p.plan_id for p in plans[:-1]]
    assert (repeated.plan_id, repeated.groups) == (plans[2].plan_id, plans[2].groups)
    assert tuple(g.layers for g in other_seed.groups) != allocations[2]
    direct = fedra_plan(problem, global_round=3, seed=0, parent_plan_id=plans[1].plan_id)
    assert (direct.plan_id, direct.groups) == (plans[2].plan_id, plans[2].groups)
    assert all(check_plan_groups(p, num_layers=NUM_LAYERS, full_rank=8) == [] for p in plans)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("fedra", "fedgsp")])
def test_only_fedra_and_fedgsp_have_a_replanner(problem, method):
    """method_replanner is None for every fixed or solved method (fedgsp's: tests/validation/test_fedgsp.py)."""
    assert method_replanner(method, problem) is None


def test_method_replanner_rejects_unknown_methods(problem):
    """An unknown method is refused by name, as make_method_plan refuses it."""
    with pytest.raises(InvalidInputError) as info:
        method_replanner("fedrA", problem)
    assert [issue.path for issue in info.value.issues] == ["method"]


@pytest.mark.parametrize("method", ["hetlora", "fedra"])
def test_descriptions_say_what_is_simplified(method):
    """Each heterogeneous baseline's one-line description names what it leaves out."""
    text = describe_method(method)
    assert ("no self-pruning" in text) if method == "hetlora" else ("independent draws" in text)


def test_docstring_examples_run():
    """The module's examples pass."""
    result = doctest.testmod(heterogeneous_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
