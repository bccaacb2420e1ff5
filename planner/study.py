"""What-if studies, defined: the swept axes, a :class:`Study` (a list of values per axis and the fixed parts),
its points (:class:`StudyPoint`, :func:`study_points`) and the field rules of both.

``planner.whatif`` plans the points; ``planner.study_inputs`` loads and checks a study's files first.

Examples
--------
>>> study = Study(fleet_sizes=(20, 40), backhaul_mbps=(5.0, 50.0))
>>> study.swept
('fleet_size', 'backhaul_mbps')
>>> [(p.fleet_size, p.backhaul_mbps) for p in study_points(study)]
[(20, 5.0), (20, 50.0), (40, 5.0), (40, 50.0)]
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping
from typing import Any

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.tiers import NETWORKS
from hierfedlora.planner.io import to_dict
from hierfedlora.planner.rules import (
    FINITE_POSITIVE,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Rule,
    is_int,
    optional,
)
from hierfedlora.planner.types import CONVERGENCE_RULES, PROBLEM_RULES

__all__ = ["AXES", "MAX_STUDY_DEVICES", "Study", "StudyPoint", "study_points"]

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
