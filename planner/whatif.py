"""What-if capacity studies: plan every point of a cross-product of settings; failures are rows too.

A :class:`Study` names the axes (fleet size, device mix, link class, backhaul, server link,
number of groups, cost model, target, budgets) and the fixed parts (a synthetic fleet's label
skew, or a real fleet file, and any other :class:`PlanningProblem` field). :func:`study_points`
expands it into :class:`StudyPoint` s, in a fixed order; :func:`run_point` plans one and returns a
:class:`StudyRow` whatever happens: a plan's predictions, or the typed failure (invalid input,
infeasible with the conflicting constraint families named, no solution, solver failure).
Exceptions for one plan, data for many.

Rows are pure functions of their point (every draw is seeded), so a driver may store each row
as it finishes and skip finished points on a re-run (``hierfedlora whatif`` does, atomically per
row). Points that share a fleet and the grouping's inputs share one grouping
(:class:`GroupingCache`): the grouping never reads costs, links, targets or budgets.

The study itself (:class:`Study`, its axes and points) is defined in :mod:`hierfedlora.planner.study`, its inputs
loaded and checked in :mod:`hierfedlora.planner.study_inputs`; both are importable from here.

Examples
--------
>>> study = Study(fleet_sizes=(20,), backhaul_mbps=(5.0, 50.0), num_classes=4, samples_per_device=16)
>>> rows = [run_point(point) for point in study_points(study)]
>>> [(row.backhaul_mbps, row.status) for row in rows]
[(5.0, 'OPTIMAL'), (50.0, 'OPTIMAL')]
>>> rows[0].time_to_target_s > rows[1].time_to_target_s  # a slower backhaul costs time
True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hierfedlora.planner.errors import (
    HierFedLoraError,
    InfeasibleError,
    InvalidInputError,
    NoSolutionError,
    SolverFailedError,
)
from hierfedlora.planner.io import from_dict, parse_json, read_text, to_dict, with_settings
from hierfedlora.planner.outcomes import Grouping
from hierfedlora.planner.study import _PROBLEM_AXES, AXES, MAX_STUDY_DEVICES, Study, StudyPoint, study_points
from hierfedlora.planner.study_inputs import DEFAULT_MODEL_CONFIG, check_study_inputs, load_cost_model
from hierfedlora.planner.types import CostModel, Fleet, PlanningProblem

__all__ = [
    "AXES",
    "GroupingCache",
    "Study",
    "StudyPoint",
    "StudyRow",
    "check_study_inputs",
    "load_cost_model",
    "run_point",
    "study_points",
    # defined in planner.study and planner.study_inputs; importable from here as before
    "DEFAULT_MODEL_CONFIG",
    "MAX_STUDY_DEVICES",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StudyRow:
    """What one point gave: the plan's predictions, or why there is none.

    ``status`` is the plan's ``OPTIMAL``/``FEASIBLE``, or ``INVALID``, ``INFEASIBLE``,
    ``NO_SOLUTION``, ``SOLVER_FAILED``; ``reason`` says why and ``conflicting`` names the
    constraint families of an infeasible point; ``target`` is the plan's (``Plan.target``).
    Traffic is per global round (devices: all devices up + down; backhaul: aggregators to and
    from the server); ``*_to_target_bytes``
    multiply by the rounds to target. ``depths`` and ``intra_rounds`` list ``value x count``.
    ``gap`` is the plan's certified relative gap on time to target (``Plan.relative_gap``).
    """

    key: str
    fleet_size: int
    tier_mix: str
    network: str | None
    backhaul_mbps: float
    server_ingress_mbps: float | None
    num_groups: int | None
    cost_model: str
    target_loss_gap: float
    round_budget_s: float | None
    traffic_budget_bytes: float | None
    status: str
    reason: str = ""
    conflicting: tuple[str, ...] = ()
    target: str = ""
    round_time_s: float | None = None
    rounds_to_target: float | None = None
    time_to_target_s: float | None = None
    device_traffic_bytes: int | None = None
    backhaul_traffic_bytes: int | None = None
    device_traffic_to_target_bytes: float | None = None
    backhaul_traffic_to_target_bytes: float | None = None
    peak_memory_bytes: int | None = None
    groups: int | None = None
    depths: str = ""
    intra_rounds: str = ""
    gap: float | None = None
    plan_id: str = ""
    solve_time_s: float = 0.0
    warnings: tuple[str, ...] = ()


def _histogram(values: list[int]) -> str:
    return " ".join(f"{v}x{values.count(v)}" for v in sorted(set(values)))


class GroupingCache:
    """Fleets and groupings shared by points that only differ in what the grouping never reads."""

    def __init__(self) -> None:
        self.fleets: dict[tuple[Any, ...], Fleet] = {}
        self.groupings: dict[tuple[Any, ...], Grouping] = {}
        self.cost_models: dict[tuple[Any, ...], CostModel] = {}

    def fleet(self, point: StudyPoint) -> Fleet:
        """The point's fleet (synthetic, or the study's fleet file), built once."""
        from hierfedlora.planner.fleet import load_fleet
        from hierfedlora.planner.fleets.synthetic import synthetic_fleet

        study = point.study
        key = (point.fleet_size, point.tier_mix, point.network, study.fleet_file)
        if key not in self.fleets:
            if study.fleet_file is not None:
                self.fleets[key] = load_fleet(study.fleet_file)
            else:
                mix: Any = point.tier_mix
                if mix.endswith(".json"):
                    mix = parse_json(read_text(mix), source=Path(mix).name)
                self.fleets[key] = synthetic_fleet(
                    num_devices=point.fleet_size,
                    num_classes=study.num_classes,
                    alpha=study.alpha,
                    samples_per_device=study.samples_per_device,
                    tier_mix=mix,
                    network=point.network,
                    seed=study.seed,
                )
        return self.fleets[key]


def _problem(point: StudyPoint, fleet: Fleet, cost: CostModel) -> PlanningProblem:
    """The point's problem: the study's fixed fields, its seed unless the solver names one, the axes' values."""
    solver = point.study.problem.get("solver") or {}
    seed = [] if isinstance(solver, Mapping) and "seed" in solver else [("solver.seed", point.study.seed)]
    data = with_settings(
        point.study.problem,
        [
            *seed,
            *((path, getattr(point, axis)) for axis, path in _PROBLEM_AXES.items()),
            ("devices", [to_dict(fleet.devices[0])]),  # parsed once for the fields' paths; the fleet goes in below
            ("cost_model", to_dict(cost)),
        ],
    )
    problem = from_dict(PlanningProblem, data, source="study")
    return dataclasses.replace(problem, devices=fleet.devices)


def run_point(point: StudyPoint, cache: GroupingCache | None = None) -> StudyRow:
    """Plan one point; every planner outcome becomes a row (nothing raises for the planner's reasons)."""
    from hierfedlora.planner.grouping import group_devices
    from hierfedlora.planner.plan import make_plan

    cache = cache or GroupingCache()
    base = {"key": point.key, **point.settings()}
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fleet = cache.fleet(point)
            num_classes = len(fleet.class_names)
            problem_data = point.study.problem
            cost_key = (point.cost_model, num_classes, problem_data.get("batch_size"))
            if cost_key not in cache.cost_models:
                cache.cost_models[cost_key] = load_cost_model(
                    point.cost_model,
                    num_classes=num_classes,
                    batch_size=int(problem_data.get("batch_size") or 16),
                    seq_len=point.study.seq_len,
                    lora_rank=point.study.lora_rank,
                )
            problem = _problem(point, fleet, cache.cost_models[cost_key])
            group_key = (
                point.fleet_size,
                point.tier_mix,
                point.network,
                point.num_groups,
                json.dumps(
                    {k: v for k, v in problem_data.items() if k not in ("convergence",)}, sort_keys=True, default=str
                ),
            )
            grouping = cache.groupings.get(group_key)
            if grouping is None:
                from hierfedlora.planner.checks import raise_for_problem

                raise_for_problem(problem)
                grouping = cache.groupings[group_key] = group_devices(problem)
            plan = make_plan(problem, grouping=grouping)
    except InfeasibleError as err:
        return StudyRow(**base, status="INFEASIBLE", reason=err.reason, conflicting=tuple(err.conflicting),
                        warnings=_texts(caught))  # fmt: skip
    except InvalidInputError as err:
        return StudyRow(**base, status="INVALID", reason=str(err), warnings=_texts(caught))
    except NoSolutionError as err:
        return StudyRow(**base, status="NO_SOLUTION", reason=str(err), warnings=_texts(caught))
    except SolverFailedError as err:
        return StudyRow(**base, status="SOLVER_FAILED", reason=str(err), warnings=_texts(caught))
    except HierFedLoraError as err:  # any other planner error is still a row
        return StudyRow(**base, status=type(err).__name__, reason=str(err), warnings=_texts(caught))
    rounds = plan.predicted_rounds_to_target
    return StudyRow(
        **base,
        status=plan.status.name,
        target=plan.target,
        round_time_s=plan.predicted_round_time_s,
        rounds_to_target=rounds,
        time_to_target_s=plan.objective_value,
        device_traffic_bytes=plan.predicted_traffic_bytes,
        backhaul_traffic_bytes=plan.predicted_backhaul_bytes,
        device_traffic_to_target_bytes=plan.predicted_traffic_bytes * rounds,
        backhaul_traffic_to_target_bytes=plan.predicted_backhaul_bytes * rounds,
        peak_memory_bytes=plan.predicted_peak_memory_bytes,
        groups=len(plan.groups),
        depths=_histogram([g.depth for g in plan.groups]),
        intra_rounds=_histogram([g.intra_rounds for g in plan.groups]),
        gap=plan.relative_gap,
        plan_id=plan.plan_id,
        solve_time_s=plan.solve_time_s,
        warnings=_texts(caught),
    )


def _texts(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(w.message) for w in caught))


def row_path(folder: str | os.PathLike[str], key: str) -> Path:
    """Where a driver keeps a finished row (``rows/<key>.json``)."""
    return Path(folder) / "rows" / f"{key}.json"
