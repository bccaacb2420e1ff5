"""FedGSP as a baseline: near-IID groups that grow by one a round, each a sequential chain priced as a sum."""

from __future__ import annotations

import doctest
import math

import pytest

from hierfedlora.planner import costs
from hierfedlora.planner.grouping import grouping_objective, random_grouping
from hierfedlora.planner.outcomes import GroupRoundResult, RoundReport
from hierfedlora.planner.plan_checks import check_plan_groups
from hierfedlora.planner.types import PlanningProblem, SolverOptions
from hierfedlora.validation import fedgsp as fedgsp_module
from hierfedlora.validation.baselines import make_method_plan, method_replanner
from hierfedlora.validation.fedgsp import FedgspReplanner, fedgsp_num_groups, fedgsp_plan
from tests.factories import make_cost_model, make_devices

NUM_LAYERS = 6


@pytest.fixture
def problem() -> PlanningProblem:
    """Twelve seeded non-IID devices of mixed speed, four groups at most, the toy 6-layer model."""
    return PlanningProblem(
        devices=make_devices(12, seed=3),
        cost_model=make_cost_model(NUM_LAYERS),
        num_groups=4,
        solver=SolverOptions(time_limit_s=10.0, seed=0),
    )


def _report(plan_id: str, global_round: int) -> RoundReport:
    result = GroupRoundResult(group_id=0, loss=1.0, accuracy=None, upload_bytes=0, download_bytes=0, sim_time_s=1.0)
    return RoundReport(
        plan_id=plan_id, global_round=global_round, sim_time_s=1.0, wall_time_s=1.0, groups=(result,),
        eval_loss=1.0, eval_accuracy=0.5,
    )  # fmt: skip


def test_the_schedule_grows_one_group_a_round_up_to_num_groups(problem):
    """M_t = 1, 2, 3, 4, 4, ...; the replanner follows it and stops switching once it stops growing."""
    # Arrange
    replanner = method_replanner("fedgsp", problem)
    plans = [make_method_plan("fedgsp", problem)]
    # Act
    for global_round in range(1, 6):
        following = replanner(plans[-1], [_report(plans[-1].plan_id, global_round)], {})
        if following is not None:
            plans.append(following)
    # Assert
    assert isinstance(replanner, FedgspReplanner)
    assert [fedgsp_num_groups(problem, t) for t in range(1, 7)] == [1, 2, 3, 4, 4, 4]
    assert [len(p.groups) for p in plans] == [1, 2, 3, 4]
    assert [p.parent_plan_id for p in plans[1:]] == [p.plan_id for p in plans[:-1]]
    for plan in plans:
        assert sorted(d for g in plan.groups for d in g.device_ids) == sorted(d.device_id for d in problem.devices)
        assert all(g.sequential and g.intra_rounds == 1 and g.depth == NUM_LAYERS for g in plan.groups)
        assert check_plan_groups(plan, num_layers=NUM_LAYERS) == []
    again = replanner(plans[1], [_report(plans[1].plan_id, 2)], {})  # a resumed run gets the same plan
    assert (again.plan_id, again.groups) == (plans[2].plan_id, plans[2].groups)


def test_a_chain_is_priced_as_the_sum_of_its_devices(problem):
    """Each group's predicted intra round is the sum over its devices of local steps plus exchange, and shorter
    chains make shorter rounds."""
    # Arrange
    cost, batch = problem.cost_model, problem.effective_batch_size
    by_id = {d.device_id: d for d in problem.devices}
    # Act
    plans = [fedgsp_plan(problem, global_round=t) for t in (1, 4)]
    # Assert
    for plan in plans:
        for group in plan.groups:
            each = [
                problem.local_steps
                * costs.step_time_s(cost, compute_scale=by_id[d].compute_scale, depth=group.depth, batch_size=batch)
                + costs.exchange_time_s(
                    cost,
                    by_id[d],
                    depth=group.depth,
                    latency_s=problem.intra_latency_s,
                    num_bytes=costs.group_adapter_bytes(cost, group),
                )
                for d in group.device_ids
            ]
            assert group.predicted_intra_round_s == pytest.approx(math.fsum(each), rel=1e-12)
    assert plans[1].predicted_round_time_s < plans[0].predicted_round_time_s


def test_groups_look_like_the_population(problem):
    """The grouping is the planner's near-IID one: its divergence is at most a random grouping's of the same size."""
    # Arrange
    plan = fedgsp_plan(problem, global_round=4)
    positions = {d.device_id: i for i, d in enumerate(problem.devices)}
    members = tuple(tuple(positions[d] for d in g.device_ids) for g in plan.groups)
    # Act
    ours = grouping_objective(problem, members)
    drawn = [grouping_objective(problem, random_grouping(problem, seed).members) for seed in range(5)]
    # Assert
    assert ours <= min(drawn)


def test_docstring_examples_run():
    """The module's examples pass."""
    result = doctest.testmod(fedgsp_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
