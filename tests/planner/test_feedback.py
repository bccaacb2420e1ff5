"""planner.feedback: refitting the convergence constants and device speeds, and re-planning.

Synthetic reports are made here from the model itself, computed independently of the module
(shares and skews from label counts, (M1) from ``convergence.group_progress``), so a fit that
inverts the model must recover the constants that made them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierfedlora.planner import convergence, costs, skew
from hierfedlora.planner.assignment import evaluate_assignment
from hierfedlora.planner.errors import HierFedLoraWarning, InvalidInputError
from hierfedlora.planner.feedback import (
    FIT_BOUNDS,
    TARGET_GAP_FRACTION,
    Replanner,
    history_from_reports,
    pooled_refit,
    refit_convergence,
    refit_devices,
    replan,
    step_time_ratios,
)
from hierfedlora.planner.outcomes import Grouping, Plan, RoundReport, SolveStatus
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.types import ConvergenceParams, PlanningProblem
from tests.factories import make_cost_model, make_devices, make_round_report
from tests.planner.cases import toy_problem

TRUE = ConvergenceParams(depth_exponent=0.8, skew_sensitivity=2.0, reference_rounds=40.0)


def _progress(plan: Plan, problem: PlanningProblem, params: ConvergenceParams) -> float:
    """(M1) summed over the plan's groups, shares and skews recomputed from label counts."""
    counts = {d.device_id: d.label_counts for d in problem.devices}
    pooled = [[sum(col) for col in zip(*(counts[d] for d in g.device_ids), strict=True)] for g in plan.groups]
    fleet = [sum(col) for col in zip(*pooled, strict=True)]
    return sum(
        convergence.group_progress(
            share=sum(group) / sum(fleet),
            depth=g.depth,
            num_layers=problem.cost_model.num_layers,
            intra_rounds=g.intra_rounds,
            skew_tv=skew.total_variation(group, fleet),
            params=params,
        )
        for g, group in zip(plan.groups, pooled, strict=True)
    )


def _history(
    segments: list[tuple[Plan, int]],
    problem: PlanningProblem,
    params: ConvergenceParams,
    *,
    scales: dict[str, float] | None = None,
) -> list[tuple[Plan, list[RoundReport]]]:
    """Reports whose eval loss follows (F2) under ``params``; devices step at ``scales`` (default: profiled)."""
    scale_of = {d.device_id: d.compute_scale for d in problem.devices} | (scales or {})
    start = math.log(len(problem.devices[0].label_counts))
    history, done, global_round = [], 0.0, 0
    for plan, num_rounds in segments:
        rate, reports = _progress(plan, problem, params), []
        for _ in range(num_rounds):
            global_round, done = global_round + 1, done + rate
            step_s = {
                d: costs.step_time_s(
                    problem.cost_model, compute_scale=scale_of[d], depth=g.depth, batch_size=plan.batch_size
                )
                for g in plan.groups
                for d in g.device_ids
            }
            reports.append(
                make_round_report(
                    plan,
                    global_round,
                    eval_loss=start * TARGET_GAP_FRACTION ** (done / params.reference_rounds),
                    device_step_s=step_s,
                )
            )
        history.append((plan, reports))
    return history


def _with_steps(
    history: list[tuple[Plan, list[RoundReport]]],
    edit: Callable[[dict[str, float]], object],
    rounds: tuple[int, ...] = (),
) -> list[tuple[Plan, list[RoundReport]]]:
    """``history`` with ``edit`` applied to a copy of ``device_step_s`` (of ``rounds`` only, when given)."""

    def edited(report: RoundReport) -> RoundReport:
        if rounds and report.global_round not in rounds:
            return report
        steps = dict(report.device_step_s)
        edit(steps)
        return dataclasses.replace(report, device_step_s=steps)

    return [(plan, [edited(report) for report in reports]) for plan, reports in history]


def _plan_quietly(problem: PlanningProblem, **options: object) -> Plan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HierFedLoraWarning)  # single-choice problems are suspicious on purpose
        return make_plan(problem, **options)  # type: ignore[arg-type]


HAND_SET_PRIOR = ConvergenceParams(depth_exponent=0.5, skew_sensitivity=4.0, reference_rounds=30.0)
"""The hand-set constants the package shipped before the calibrated defaults: a prior far from TRUE."""


@functools.cache
def _skewed_problem_and_plans() -> tuple[PlanningProblem, tuple[Plan, ...]]:
    """Eight non-IID devices in four pairs, and three plans that tell beta, c and R0 apart:
    full depth once a round (progress 1), depth 2 (only beta), full depth 8 times a round (only c)."""
    problem = PlanningProblem(
        devices=make_devices(8, seed=3), cost_model=make_cost_model(), num_groups=4, convergence=HAND_SET_PRIOR
    )
    plans = tuple(
        _plan_quietly(dataclasses.replace(problem, depth_choices=depths, intra_rounds_choices=rounds))
        for depths, rounds in (((6,), (1,)), ((2,), (1,)), ((6,), (8,)))
    )
    return problem, plans


def test_refit_recovers_the_constants_that_made_the_losses():
    """Losses made with beta 0.8, c 2, R0 40 under three distinct plans pull the prior (0.5, 4, 30) to them."""
    # Arrange
    problem, plans = _skewed_problem_and_plans()
    history = _history([(plan, 20) for plan in plans], problem, TRUE)
    # Act
    fit = refit_convergence(history, problem)
    # Assert
    assert fit.prior_params == problem.convergence
    assert fit.num_points == 60
    assert fit.params.depth_exponent == pytest.approx(0.8, abs=0.05)
    assert fit.params.skew_sensitivity == pytest.approx(2.0, abs=0.2)
    assert fit.params.reference_rounds == pytest.approx(40.0, rel=0.03)
    assert fit.residual_rms < 0.01


def test_reports_as_predicted_return_the_prior_exactly():
    """Losses the prior's own model predicts leave every constant where it was."""
    # Arrange
    problem, plans = _skewed_problem_and_plans()
    history = _history([(plan, 10) for plan in plans], problem, problem.convergence)
    # Act
    fit = refit_convergence(history, problem)
    # Assert
    assert fit.params == problem.convergence
    assert fit.residual_rms == pytest.approx(0.0, abs=1e-12)


def test_losses_off_by_a_hair_barely_move_the_prior():
    """The optimizer itself, not only the as-predicted shortcut, stays at the prior for near-exact losses."""
    # Arrange
    problem, plans = _skewed_problem_and_plans()
    history = [
        (plan, [dataclasses.replace(r, eval_loss=r.eval_loss + 1e-7) for r in reports])
        for plan, reports in _history([(plan, 10) for plan in plans], problem, problem.convergence)
    ]
    # Act
    fit = refit_convergence(history, problem)
    # Assert
    prior = problem.convergence
    assert fit.params != prior
    assert fit.params.depth_exponent == pytest.approx(prior.depth_exponent, rel=1e-4)
    assert fit.params.skew_sensitivity == pytest.approx(prior.skew_sensitivity, rel=1e-4)
    assert fit.params.reference_rounds == pytest.approx(prior.reference_rounds, rel=1e-4)


def test_a_few_rounds_of_one_plan_move_r0_but_barely_beta_and_c():
    """One plan only identifies progress / R0: a faster run lowers R0, beta and c stay near the prior."""
    # Arrange
    problem, plans = _skewed_problem_and_plans()
    faster = dataclasses.replace(problem.convergence, reference_rounds=20.0)
    history = _history([(plans[1], 3)], problem, faster)
    # Act
    fit = refit_convergence(history, problem)
    # Assert
    assert fit.params.reference_rounds < 22.0  # most of the way from 30 to 20
    assert fit.params.depth_exponent == pytest.approx(0.5, rel=0.1)
    assert fit.params.skew_sensitivity == pytest.approx(4.0, rel=0.05)


def test_no_reports_fit_nothing():
    """An empty history returns the prior, with no points."""
    # Arrange
    problem = toy_problem()
    # Act
    fit = refit_convergence([], problem)
    # Assert
    assert (fit.params, fit.num_points, fit.residual_rms) == (problem.convergence, 0, 0.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    losses=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=12),
    beta=st.floats(0.01, 10.0),
    c=st.floats(0.0, 200.0),
    r0=st.floats(0.1, 1e5),
)
def test_the_fit_never_leaves_its_bounds(losses, beta, c, r0):
    """Whatever the losses and the prior (even outside the bounds), the fit stays within FIT_BOUNDS."""
    # Arrange
    problem, plans = _skewed_problem_and_plans()
    problem = dataclasses.replace(
        problem, convergence=ConvergenceParams(depth_exponent=beta, skew_sensitivity=c, reference_rounds=r0)
    )
    reports = [
        dataclasses.replace(report, eval_loss=loss)
        for report, loss in zip(_history([(plans[2], len(losses))], problem, TRUE)[0][1], losses, strict=True)
    ]
    # Act
    params = refit_convergence([(plans[2], reports)], problem).params
    # Assert
    (r_lo, r_hi), (b_lo, b_hi), (c_lo, c_hi) = FIT_BOUNDS
    assert r_lo <= params.reference_rounds <= r_hi
    assert b_lo <= params.depth_exponent <= b_hi
    assert c_lo <= params.skew_sensitivity <= c_hi


def test_pooled_runs_identify_what_one_run_cannot():
    """Three runs, each of one plan from an untrained model, pooled: the constants that made them come back;
    the run at depth 2 alone cannot move c from the prior."""
    # Arrange
    problem, plans = _skewed_problem_and_plans()
    runs = [(_history([(plan, 12)], problem, TRUE), problem) for plan in plans]
    # Act
    pooled = pooled_refit(runs, problem.convergence)
    alone = pooled_refit(runs[1:2], problem.convergence)
    # Assert
    assert pooled.num_points == 36 and pooled.prior_params == problem.convergence
    assert pooled.params.depth_exponent == pytest.approx(0.8, abs=0.05)
    assert pooled.params.skew_sensitivity == pytest.approx(2.0, abs=0.2)
    assert pooled.params.reference_rounds == pytest.approx(40.0, rel=0.03)
    assert alone.params.skew_sensitivity == pytest.approx(problem.convergence.skew_sensitivity, rel=1e-6)


def test_pooled_refit_names_the_run_and_refuses_mixed_class_counts():
    """A bad report is named with its run; problems with different numbers of classes cannot share l_0."""
    # Arrange
    problem, plans = _skewed_problem_and_plans()
    good = _history([(plans[0], 2)], problem, TRUE)
    bad = [(plans[0], [dataclasses.replace(r, plan_id="other") for r in good[0][1]])]
    wider = dataclasses.replace(
        problem, devices=tuple(dataclasses.replace(d, label_counts=(*d.label_counts, 1)) for d in problem.devices)
    )
    # Act
    with pytest.raises(InvalidInputError) as bad_run:
        pooled_refit([(good, problem), (bad, problem)], problem.convergence)
    with pytest.raises(InvalidInputError) as mixed:
        pooled_refit([(good, problem), (good, wider)], problem.convergence)
    # Assert
    assert [i.path for i in bad_run.value.issues] == [
        "runs[1].history[0].reports[0].plan_id",
        "runs[1].history[0].reports[1].plan_id",
    ]
    assert [i.path for i in mixed.value.issues] == ["runs"]


def test_refit_reports_every_inconsistent_report():
    """A report listed under another plan and a round that goes back are both reported, with paths."""
    # Arrange
    problem, plans = _skewed_problem_and_plans()
    reports = _history([(plans[0], 2)], problem, TRUE)[0][1]
    history = [(plans[1], [reports[0]]), (plans[0], [reports[0]])]  # wrong plan; round 1 again
    # Act
    with pytest.raises(InvalidInputError) as info:
        refit_convergence(history, problem, prior_weight=-1.0)
    # Assert
    assert [issue.path for issue in info.value.issues] == [
        "history[0].reports[0].plan_id",
        "history[1].reports[0].global_round",
        "prior_weight",
    ]


def test_device_refit_scales_slow_devices_and_ignores_noise():
    """2x the predicted step doubles compute_scale; 3% over stays; a device never observed stays."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    history = _with_steps(
        _history([(plan, 3)], problem, problem.convergence, scales={"d0": 2.0, "d1": 1.03}),
        lambda steps: steps.pop("d3"),
    )
    # Act
    devices = refit_devices(problem, history)
    # Assert
    assert [d.compute_scale for d in devices] == pytest.approx([2.0, 1.0, 1.0, 1.0])
    assert devices[1] is problem.devices[1]
    assert step_time_ratios(history, problem)["d0"] == pytest.approx((2.0, 2.0, 2.0))
    assert "d3" not in step_time_ratios(history, problem)


def test_device_refit_takes_the_median_and_damps():
    """One outlier round does not move the median; damping 0.5 takes the square root of the ratio."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    history = _history([(plan, 3)], problem, problem.convergence, scales={"d0": 4.0})
    history = _with_steps(history, lambda steps: steps.update(d0=1000.0), rounds=(1,))
    # Act
    devices = refit_devices(problem, history, damping=0.5)
    # Assert
    assert devices[0].compute_scale == pytest.approx(2.0)


def test_device_refit_rejects_bad_settings():
    """A tolerance of 1 or more and a damping of 0 are both reported."""
    # Arrange
    problem = toy_problem()
    # Act
    with pytest.raises(InvalidInputError) as info:
        refit_devices(problem, [], tolerance=1.0, damping=0.0)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["tolerance", "damping"]


def test_reports_as_predicted_leave_the_plan_unchanged():
    """Losses and step times as predicted: the same plan (same id) is kept, with no gain claimed."""
    # Arrange
    problem, _ = _skewed_problem_and_plans()
    plan = make_plan(problem)
    history = _history([(plan, 6)], problem, problem.convergence)
    # Act
    decision = replan(plan, history, problem)
    # Assert
    assert decision.changed is False
    assert decision.plan is plan
    assert decision.predicted_gain == 0.0
    assert decision.fit.params == problem.convergence
    assert decision.devices == problem.devices
    assert decision.reason == "the refit leaves the best plan unchanged"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), num_rounds=st.integers(1, 8))
def test_replan_on_reports_matching_the_prediction_changes_nothing(seed, num_rounds):
    """Any small random fleet: reports as its plan predicts never change the plan."""
    # Arrange
    problem = PlanningProblem(
        devices=make_devices(6, seed=seed), cost_model=make_cost_model(), num_groups=2, intra_rounds_choices=(1, 2, 4)
    )
    plan = make_plan(problem)
    history = _history([(plan, num_rounds)], problem, problem.convergence)
    # Act
    decision = replan(plan, history, problem, min_relative_gain=0.0)
    # Assert
    assert (decision.changed, decision.plan.plan_id) == (False, plan.plan_id)


def test_a_slow_device_moves_its_group_to_a_cheaper_choice():
    """d0 at twice its profiled step: its group drops to depth 1 (84 s instead of 100 s to target)."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    history = _history([(plan, 3)], problem, problem.convergence, scales={"d0": 2.0})
    # Act
    decision = replan(plan, history, problem, reason_prefix="after global round 3: ")
    # Assert
    assert decision.changed is True
    assert decision.plan.parent_plan_id == plan.plan_id
    assert [(g.device_ids, g.intra_rounds) for g in decision.plan.groups] == [(("d0", "d1"), 2), (("d2", "d3"), 2)]
    assert [g.depth for g in decision.plan.groups] == [1, 2]
    assert decision.predicted_gain == pytest.approx(0.16)
    assert decision.plan.objective_value == pytest.approx(84.0)
    assert decision.plan.reason == decision.reason
    assert decision.reason.startswith("after global round 3: the refit (")
    assert "compute_scale of d0" in decision.reason
    # the re-assigned groups carry their new traffic and memory: group 0 now moves depth-1 adapters
    first, second = decision.plan.groups
    assert first.predicted_traffic_bytes == costs.group_traffic_bytes(
        problem.cost_model, num_devices=2, depth=1, intra_rounds=2
    )
    assert first.predicted_peak_memory_bytes < second.predicted_peak_memory_bytes
    assert decision.plan.predicted_traffic_bytes == first.predicted_traffic_bytes + second.predicted_traffic_bytes


def test_hysteresis_keeps_the_plan_for_a_small_gain():
    """d0 at 1.5x: a depth-1 group saves 1 s of 85 (1.2%); below 5% the plan stays, at 0% it switches."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    history = _history([(plan, 3)], problem, problem.convergence, scales={"d0": 1.5})
    # Act
    kept = replan(plan, history, problem)
    switched = replan(plan, history, problem, min_relative_gain=0.0)
    # Assert
    assert (kept.changed, kept.plan.plan_id) == (False, plan.plan_id)
    assert kept.predicted_gain == pytest.approx(1 / 85)
    assert "below the threshold 5.0%" in kept.reason
    assert switched.changed is True
    assert switched.plan.objective_value == pytest.approx(84.0)


def test_a_plan_that_breaks_the_round_budget_is_replaced_whatever_the_gain():
    """With a 14 s budget, d0 at 2x makes the plan's round 20 s: it is replaced though 16% < 50%."""
    # Arrange
    problem = toy_problem(round_budget_s=14.0)
    plan = make_plan(problem)
    history = _history([(plan, 3)], problem, problem.convergence, scales={"d0": 2.0})
    # Act
    decision = replan(plan, history, problem, min_relative_gain=0.5)
    # Assert
    assert decision.changed is True
    assert "breaks round_budget" in decision.reason
    assert decision.plan.predicted_round_time_s <= 14.0


def test_a_refit_depth_exponent_changes_the_plan():
    """Losses showing depth barely matters (beta 0.2, prior 1) turn both groups to depth 1.

    All at depth 1 takes 10 * 8 / (2 * 0.5 ** beta) s against 70 s at depth 2: better for beta < 0.81.
    """
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)  # depth 2 everywhere under beta = 1
    shallow = _plan_quietly(toy_problem(depth_choices=(1,)))
    truth = ConvergenceParams(depth_exponent=0.2, skew_sensitivity=4.0, reference_rounds=100.0)
    history = _history([(shallow, 15), (plan, 15)], problem, truth)
    # Act
    decision = replan(plan, history, problem)
    # Assert
    assert decision.fit.params.depth_exponent < 0.5  # most of the way from the prior's 1 to 0.2
    assert decision.fit.params.reference_rounds > 50.0
    assert decision.changed is True
    assert [g.depth for g in decision.plan.groups] == [1, 1]
    assert decision.predicted_gain > 0.05


def test_replanning_is_deterministic():
    """The same plan, history and problem give the same decision, plan id and groups, twice."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    history = _history([(plan, 4)], problem, TRUE, scales={"d0": 2.0})
    # Act
    first, second = replan(plan, history, problem), replan(plan, history, problem)
    # Assert
    assert first.changed is True
    assert first.plan.plan_id == second.plan.plan_id
    assert first.plan.groups == second.plan.groups
    assert (first.reason, first.predicted_gain, first.fit, first.devices) == (
        second.reason,
        second.predicted_gain,
        second.fit,
        second.devices,
    )


def test_removed_devices_yield_a_valid_plan_on_the_rest(tiny_fleet, cost_model):
    """d3 leaves: a new plan over exactly the other seven devices, its prediction consistent, twice the same."""
    # Arrange
    problem = PlanningProblem(devices=tiny_fleet, cost_model=cost_model, num_groups=2)
    plan = make_plan(problem)
    history = _history([(plan, 2)], problem, problem.convergence)
    remaining = dataclasses.replace(problem, devices=tuple(d for d in tiny_fleet if d.device_id != "d3"))
    # Act
    decision = replan(plan, history, problem, removed_device_ids=["d3"])
    again = replan(plan, history, problem, removed_device_ids=["d3"])
    # Assert
    new = decision.plan
    assert decision.changed is True
    assert decision.reason == "fleet changed: removed d3"
    assert (new.parent_plan_id, new.reason) == (plan.plan_id, decision.reason)
    assert sorted(new.device_ids) == sorted(d.device_id for d in remaining.devices)
    assert new.status in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE)
    assert Plan(**{f.name: getattr(new, f.name) for f in dataclasses.fields(Plan)}) == new  # checks pass again
    assert all(g.depth in remaining.effective_depth_choices for g in new.groups)
    position = {d.device_id: idx for idx, d in enumerate(remaining.devices)}
    grouping = Grouping(
        members=tuple(tuple(sorted(position[d] for d in g.device_ids)) for g in new.groups),
        objective=0.0,
        bound=0.0,
        status=SolveStatus.OPTIMAL,
        limit=None,
        solve_time_s=0.0,
        method="test",
    )
    depths, rounds = [g.depth for g in new.groups], [g.intra_rounds for g in new.groups]
    assert new.objective_value == pytest.approx(evaluate_assignment(grouping, remaining, depths, rounds))
    assert math.isfinite(decision.predicted_gain)
    assert (again.plan.plan_id, again.plan.groups) == (new.plan_id, new.groups)


def test_replan_rejects_unknown_devices_and_a_negative_threshold():
    """A removed id the problem lacks and a negative min_relative_gain are both reported."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    # Act
    with pytest.raises(InvalidInputError) as info:
        replan(plan, [], problem, removed_device_ids=["d9"], min_relative_gain=-0.1)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["removed_device_ids", "min_relative_gain"]


def test_replanner_consults_every_r_rounds_only():
    """every_rounds=3: rounds 1, 2, 4 return None without deciding; rounds 3 and 6 decide (as predicted: keep)."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    reports = _history([(plan, 6)], problem, problem.convergence)[0][1]
    replanner = Replanner(problem, every_rounds=3)
    # Act
    answers = [replanner(plan, reports[:n]) for n in range(1, 7)]
    # Assert
    assert answers == [None] * 6
    assert len(replanner.decisions) == 2
    assert [d.changed for d in replanner.decisions] == [False, False]
    assert replanner.decisions[1].reason.startswith("after global round 6: ")


def test_replanner_switches_plans_and_follows_the_history():
    """A slow device switches the plan at round 2; later reports under the new plan are understood."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    replanner = Replanner(problem, every_rounds=2)
    first = _history([(plan, 2)], problem, problem.convergence, scales={"d0": 2.0})[0][1]
    # Act
    new = replanner(plan, first, {plan.plan_id: plan})
    both = _history([(plan, 2), (new, 2)], problem, problem.convergence, scales={"d0": 2.0})
    again = replanner(new, [r for _, reports in both for r in reports])  # no mapping: it remembers both plans
    # Assert
    assert new is not None and new.parent_plan_id == plan.plan_id
    assert again is None
    assert [d.changed for d in replanner.decisions] == [True, False]
    assert replanner.decisions[1].plan is new


def test_replanner_replans_at_once_when_a_device_drops(tiny_fleet, cost_model):
    """A report naming a dropped device of the plan triggers a re-plan off the R-round schedule."""
    # Arrange
    problem = PlanningProblem(devices=tiny_fleet, cost_model=cost_model, num_groups=2)
    plan = make_plan(problem)
    reports = _history([(plan, 1)], problem, problem.convergence)[0][1]
    reports = [dataclasses.replace(reports[0], dropped_device_ids=("d5",))]
    replanner = Replanner(problem, every_rounds=10)
    # Act
    new = replanner(plan, reports)
    # Assert
    assert new is not None
    assert "d5" not in new.device_ids and len(new.device_ids) == 7
    assert replanner.decisions[0].reason == "after global round 1: fleet changed: removed d5"


def test_replanner_rejects_bad_settings():
    """every_rounds 0 and a NaN threshold are both reported."""
    # Arrange
    problem = toy_problem()
    # Act
    with pytest.raises(InvalidInputError) as info:
        Replanner(problem, every_rounds=0, min_relative_gain=math.nan)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["every_rounds", "min_relative_gain"]


def test_history_needs_every_plan_it_names():
    """A report naming a plan nobody knows is an error, not a silently shorter history."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    reports = _history([(plan, 2)], problem, problem.convergence)[0][1]
    # Act
    with pytest.raises(InvalidInputError) as info:
        history_from_reports(reports, {})
    # Assert
    assert [issue.path for issue in info.value.issues] == ["reports[0].plan_id", "reports[1].plan_id"]


def test_history_groups_consecutive_reports_by_plan():
    """Reports of plans A, A, B, A become three runs, in order."""
    # Arrange
    problem = toy_problem()
    a, b = make_plan(problem), _plan_quietly(toy_problem(depth_choices=(1,)))
    reports = [r for plan, rs in _history([(a, 2), (b, 1), (a, 1)], problem, TRUE) for r in rs]
    # Act
    history = history_from_reports(reports, {a.plan_id: a, b.plan_id: b})
    # Assert
    assert [(plan.plan_id, [r.global_round for r in rs]) for plan, rs in history] == [
        (a.plan_id, [1, 2]),
        (b.plan_id, [3]),
        (a.plan_id, [4]),
    ]


def test_devices_not_in_the_plan_are_skipped_by_the_step_ratios():
    """A measured device the problem lacks contributes nothing (and raises nothing)."""
    # Arrange
    problem = toy_problem()
    plan = make_plan(problem)
    history = _with_steps(_history([(plan, 1)], problem, problem.convergence), lambda steps: steps.update(ghost=9.0))
    # Act
    ratios = step_time_ratios(history, problem)
    # Assert
    assert sorted(ratios) == ["d0", "d1", "d2", "d3"]
