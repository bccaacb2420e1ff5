"""A probe round: one global round in which a few groups run another depth or another tau, so that the
closed loop's refit of the convergence constants sees informative variation.

Why. The closed loop (:mod:`hierfedlora.planner.feedback`) refits beta (depth exponent), c (skew
sensitivity) and R0 (reference rounds) from the rounds it has run. A run that keeps one plan shows one
progress rate per group: R0, beta and c are then not separately identifiable, and a MAP refit stays at
its prior. Progress per round, in the model of :mod:`hierfedlora.planner.convergence`, scales with
``(depth / L) ** beta`` and with intra-group rounds through the group's skew (``c``); a round in which
one group trains at another depth gives a second point on the depth axis (beta), one in which a group
runs another tau a second point on the tau axis (c).

Design (what this module does; wiring it into a run is the caller's):

1. choose ``num_groups`` groups of the plan with a seeded draw;
2. alternate what each changes: the first a depth, the second tau, and so on. A depth probe takes the
   fitting depth choice farthest from the group's in log depth (most contrast for beta per probe round);
   a tau probe takes tau 1 if the group runs more, else the next tau choice;
3. price the probe round with the planner's own tables (``assignment.data``: costs (C1)-(C8)); the
   result is a :class:`Probe` holding a full :class:`Plan` for that one round, its predicted round time
   and its extra time over the plan's round.

The probe is charged in simulated time by construction: the runtime runs ``probe.plan`` for one round
on the same clock, which charges what that round really costs; the closed loop then goes back to the
plan (or a re-plan) with a history holding two structures. :class:`ProbingReplanner` does that in a
run: it wraps the closed loop's ``Replanner``, answers the probe after a given round and re-plans from
the richer history right after it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hierfedlora.planner.assignment import assignment_from_choices
from hierfedlora.planner.assignment.data import build_assignment_data
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.kept_plan import kept_grouping
from hierfedlora.planner.outcomes import Grouping, Plan, RoundReport, SolveStatus
from hierfedlora.planner.plan import build_plan
from hierfedlora.planner.types import PlanningProblem

__all__ = ["Probe", "ProbingReplanner", "probe_plan"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """One probe round: its plan, which groups it changes and what it costs.

    ``extra_round_s`` is the probe round's predicted time minus the plan's predicted round time
    (negative when the probe is faster, e.g. a shallower depth); ``changes`` says, per changed
    group, ``"depth a->b"`` or ``"tau a->b"``.
    """

    plan: Plan
    changed: tuple[int, ...]
    changes: tuple[str, ...]
    round_time_s: float
    extra_round_s: float


def _grouping(plan: Plan, problem: PlanningProblem) -> Grouping:
    position = {d.device_id: i for i, d in enumerate(problem.devices)}
    missing = [d for g in plan.groups for d in g.device_ids if d not in position]
    if missing:
        raise InvalidInputError([Issue("plan.groups", "device ids of the problem's devices", missing[:5])])
    return kept_grouping([g.device_ids for g in plan.groups], problem)


def probe_plan(plan: Plan, problem: PlanningProblem, *, num_groups: int = 1, seed: int = 0) -> Probe:
    """The probe round of ``plan`` (module docstring): ``num_groups`` groups at another depth or tau.

    Parameters
    ----------
    plan : Plan
        The plan in force, made for ``problem`` (its depths and taus among the problem's choices).
    problem : PlanningProblem
    num_groups : int
        Groups to change, 1 to the plan's group count.
    seed : int
        Seed of the draw of groups (>= 0).

    Raises
    ------
    InvalidInputError
        ``num_groups`` or ``seed`` out of range, or a plan whose devices, depths or taus are not the problem's.
    """
    issues = []
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or not 1 <= num_groups <= len(plan.groups):
        issues.append(Issue("num_groups", f"an integer in 1..{len(plan.groups)} (the plan's groups)", num_groups))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        issues.append(Issue("seed", "an integer >= 0", seed))
    if issues:
        raise InvalidInputError(issues)
    started = time.perf_counter()
    grouping = _grouping(plan, problem)
    data = build_assignment_data(grouping, problem)
    try:
        choices = np.array([data.choice_index(g.depth, g.intra_rounds) for g in plan.groups], dtype=np.int64)
    except ValueError:
        expected = f"depths in {list(data.depths)} and intra_rounds in {list(data.intra_rounds)}"
        got = [(g.depth, g.intra_rounds) for g in plan.groups]
        raise InvalidInputError([Issue("plan.groups", expected, got)]) from None
    picked = sorted(np.random.default_rng(seed).choice(len(plan.groups), size=num_groups, replace=False).tolist())
    changes = []
    for order, k in enumerate(picked):
        group = plan.groups[k]
        depth, tau = group.depth, group.intra_rounds
        fitting = [d for d in data.depths if data.fits[k, data.choice_index(d, tau)] and d != depth]
        if order % 2 == 0 and fitting:  # a depth probe: the farthest fitting depth in log depth
            new_depth = max(fitting, key=lambda d: (abs(np.log(d / depth)), -d))
            choices[k] = data.choice_index(new_depth, tau)
            changes.append(f"group {group.group_id}: depth {depth}->{new_depth}")
            continue
        higher = [t for t in data.intra_rounds if t > tau]
        new_tau = 1 if tau > 1 or not higher else higher[0]
        if new_tau == tau or not data.fits[k, data.choice_index(depth, new_tau)]:
            changes.append(f"group {group.group_id}: unchanged (no other fitting depth or tau)")
            continue
        choices[k] = data.choice_index(depth, new_tau)
        changes.append(f"group {group.group_id}: tau {tau}->{new_tau}")
    ratio_s = data.evaluate(choices).ratio_s
    assignment = assignment_from_choices(data, choices, ratio_s, SolveStatus.OPTIMAL, None, started, 0, "probe")
    probe = build_plan(
        problem,
        grouping,
        assignment,
        solver="probe",
        solve_time_s=time.perf_counter() - started,
        parent_plan_id=plan.plan_id,
        reason="probe round for self-calibration: " + "; ".join(changes),
    )
    changed = tuple(plan.groups[k].group_id for k in picked if "unchanged" not in changes[picked.index(k)])
    return Probe(
        plan=probe,
        changed=changed,
        changes=tuple(changes),
        round_time_s=probe.predicted_round_time_s,
        extra_round_s=probe.predicted_round_time_s - plan.predicted_round_time_s,
    )


class ProbingReplanner:
    """A :class:`~hierfedlora.planner.feedback.Replanner` that runs one probe round after ``after_round``.

    After global round ``after_round`` it answers the probe plan (:func:`probe_plan` of the plan in
    force); after the probe round it re-plans at once from the prior plan with the history that now
    holds two structures (``feedback.replan``: refit, then keep or replace), and answers the re-plan
    or the prior plan. At every other round it asks ``replanner``. It keeps no state that changes its
    answers: the probe is recomputed from the plan (seeded), and the prior plan is the probe's
    ``parent_plan_id``, so a resumed run gets the same plans.

    Raises
    ------
    InvalidInputError
        ``after_round`` not an integer >= 1 (``num_groups`` and ``seed`` are checked by :func:`probe_plan`).
    """

    def __init__(self, replanner: Any, *, after_round: int, num_groups: int = 1, seed: int = 0) -> None:
        if isinstance(after_round, bool) or not isinstance(after_round, int) or after_round < 1:
            raise InvalidInputError([Issue("after_round", "an integer >= 1", after_round)])
        self.replanner, self.after_round, self.num_groups, self.seed = replanner, after_round, num_groups, seed
        self.probes: list[Probe] = []

    @property
    def decisions(self) -> list[Any]:
        """The wrapped replanner's decisions."""
        return self.replanner.decisions

    def __call__(
        self, plan: Plan, reports: Sequence[RoundReport], plans: Mapping[str, Plan] | None = None
    ) -> Plan | None:
        """The plan to switch to after ``reports`` (all of the run's, in order), or ``None``."""
        from hierfedlora.planner.feedback import history_from_reports, replan

        known = {plan.plan_id: plan, **(plans or {}), **{p.plan.plan_id: p.plan for p in self.probes}}
        problem = self.replanner.problem
        if len(reports) == self.after_round and plan.solver != "probe":
            probe = probe_plan(plan, problem, num_groups=self.num_groups, seed=self.seed)
            self.probes.append(probe)
            log.info("probe round after round %d: %s", len(reports), "; ".join(probe.changes))
            return probe.plan
        if plan.solver == "probe" and reports and reports[-1].plan_id == plan.plan_id:
            prior = known.get(plan.parent_plan_id or "")
            if prior is None:
                raise InvalidInputError([Issue("plans", "the probe's parent plan", plan.parent_plan_id)])
            known[prior.plan_id] = prior
            decision = replan(
                prior,
                history_from_reports(reports, known),
                problem,
                min_relative_gain=self.replanner.min_relative_gain,
                reason_prefix=f"after the probe round {reports[-1].global_round}: ",
                prior_weight=getattr(self.replanner, "prior_weight", 1.0),
            )
            self.replanner.decisions.append(decision)
            return decision.plan if decision.changed else prior
        return self.replanner(plan, reports, plans)
