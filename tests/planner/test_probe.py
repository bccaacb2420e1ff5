"""The probe round: a few groups at another depth or tau, priced by the planner's tables."""

from __future__ import annotations

import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.probe import probe_plan
from hierfedlora.planner.types import PlanningProblem, SolverOptions
from hierfedlora.validation.baselines import make_method_plan
from tests.factories import make_cost_model, make_devices


@pytest.fixture(scope="module")
def planned():
    problem = PlanningProblem(
        devices=make_devices(12),
        cost_model=make_cost_model(),
        num_groups=3,
        solver=SolverOptions(seed=0, time_limit_s=2.0),
    )
    return problem, make_plan(problem)


def test_probe_changes_the_drawn_groups_only_first_depth_then_tau(planned):
    """Two probed groups: the first at another depth (same tau), the second at another tau (same depth);
    every other group and every group's devices unchanged; the probe names its parent."""
    # Arrange
    problem, plan = planned
    # Act
    probe = probe_plan(plan, problem, num_groups=2, seed=0)
    # Assert
    before = {g.group_id: g for g in plan.groups}
    after = {g.group_id: g for g in probe.plan.groups}
    assert [after[k].device_ids for k in after] == [before[k].device_ids for k in before]
    assert len(probe.changed) == 2 and probe.plan.parent_plan_id == plan.plan_id
    first, second = probe.changed
    assert after[first].depth != before[first].depth and after[first].intra_rounds == before[first].intra_rounds
    assert after[second].intra_rounds != before[second].intra_rounds and after[second].depth == before[second].depth
    assert all(after[k] == before[k] for k in before if k not in probe.changed)
    assert probe.changes[0].startswith(f"group {first}: depth") and "tau" in probe.changes[1]


def test_probe_is_priced_as_the_planner_prices_any_plan(planned):
    """The probe's round time is its plan's prediction, and the extra is measured against the plan's round;
    the same draw with the same seed gives the same probe (its solve time aside)."""
    problem, plan = planned
    probe = probe_plan(plan, problem, num_groups=1, seed=3)
    again = probe_plan(plan, problem, num_groups=1, seed=3)
    assert (probe.plan.plan_id, probe.plan.groups, probe.changes) == (
        again.plan.plan_id,
        again.plan.groups,
        again.changes,
    )
    assert probe.round_time_s == probe.plan.predicted_round_time_s > 0
    assert probe.extra_round_s == pytest.approx(probe.plan.predicted_round_time_s - plan.predicted_round_time_s)


def test_a_flat_full_depth_plan_probes_a_shallower_depth_that_costs_less(planned):
    """FedLoRA's single full-depth group: the depth probe takes the shallowest choice, a cheaper round."""
    problem, _ = planned
    flat = make_method_plan("fedlora", problem)
    probe = probe_plan(flat, problem, num_groups=1)
    assert probe.plan.groups[0].depth == min(problem.effective_depth_choices)
    assert probe.extra_round_s < 0


@pytest.mark.parametrize(("num_groups", "seed", "path"), [(0, 0, "num_groups"), (4, 0, "num_groups"), (1, -1, "seed")])
def test_probe_refuses_bad_counts_and_seeds(planned, num_groups, seed, path):
    problem, plan = planned
    with pytest.raises(InvalidInputError) as caught:
        probe_plan(plan, problem, num_groups=num_groups, seed=seed)
    assert caught.value.issues[0].path == path


def test_a_depth_probe_round_lets_the_refit_find_beta_that_one_plan_cannot(planned):
    """Eval losses made by the convergence model with beta 0.6 (R0 and c at the prior), refitted from a weak
    prior (weight 0.01): six rounds of one plan leave beta near the prior's 0.108; the same rounds with the
    third a depth probe more than halve its error (the model's (F1)-(F2) curves, noise-free)."""
    import dataclasses
    import math

    from hierfedlora.planner.refit import TARGET_GAP_FRACTION, plan_progress, refit_convergence
    from tests.factories import make_round_report

    # Arrange
    problem, plan = planned
    truth = dataclasses.replace(problem.convergence, depth_exponent=0.6)
    counts = {d.device_id: d.label_counts for d in problem.devices}
    layers = problem.cost_model.num_layers
    probe = probe_plan(plan, problem, num_groups=1, seed=0)
    top = math.log(len(problem.devices[0].label_counts))

    def history(plans):
        progress, out = 0.0, []
        for r, p in enumerate(plans, start=1):
            progress += plan_progress(p, counts, layers, truth)
            loss = top * TARGET_GAP_FRACTION ** (progress / truth.reference_rounds)
            report = make_round_report(p, r, eval_loss=loss)
            if out and out[-1][0] is p:
                out[-1][1].append(report)
            else:
                out.append((p, [report]))
        return [(p, tuple(rs)) for p, rs in out]

    # Act
    flat = refit_convergence(history([plan] * 6), problem, prior_weight=0.01).params
    probed = refit_convergence(history([plan, plan, probe.plan, plan, plan, plan]), problem, prior_weight=0.01).params
    # Assert
    assert abs(flat.depth_exponent - 0.6) > 0.3
    assert abs(probed.depth_exponent - 0.6) < 0.5 * abs(flat.depth_exponent - 0.6)


def test_probing_replanner_probes_once_then_replans_from_the_richer_history(planned):
    """After round 2: the probe plan (parent: the plan in force). After the probe round: a plan that is not a
    probe (the prior or a re-plan), with the decision recorded. Elsewhere it defers to the Replanner; asked
    again with the same arguments it answers the same (resume)."""
    from hierfedlora.planner.feedback import Replanner
    from hierfedlora.planner.probe import ProbingReplanner
    from tests.factories import make_round_report

    # Arrange
    problem, plan = planned
    loop = ProbingReplanner(Replanner(problem, every_rounds=100), after_round=2, num_groups=1, seed=0)
    reports = [make_round_report(plan, r, eval_loss=1.2 - 0.1 * r) for r in (1, 2)]
    # Act
    before = loop(plan, reports[:1])
    probe = loop(plan, reports)
    again = ProbingReplanner(Replanner(problem, every_rounds=100), after_round=2)(plan, reports)
    probed = [*reports, make_round_report(probe, 3, eval_loss=0.85)]
    after = loop(probe, probed, {plan.plan_id: plan})
    # Assert
    assert before is None
    assert probe.solver == "probe" and probe.parent_plan_id == plan.plan_id and again.plan_id == probe.plan_id
    assert after is not None and after.solver != "probe" and len(loop.decisions) == 1
    assert after.plan_id == plan.plan_id or loop.decisions[0].changed


def test_probing_replanner_refuses_a_bad_round():
    from hierfedlora.planner.probe import ProbingReplanner

    with pytest.raises(InvalidInputError) as caught:
        ProbingReplanner(object(), after_round=0)
    assert caught.value.issues[0].path == "after_round"
