"""Input contract types: devices, fleets, measured costs and the planning problem.

All are frozen, slotted, keyword-only dataclasses with tuples (not lists) and units in
field names. ``__post_init__`` checks every field against its declared :class:`Rule` and
raises one :class:`InvalidInputError` listing every broken field. Rules that span several
objects (equal class counts across devices, depth choices within the model's layers,
unique ids) live in :mod:`hierfedlora.planner.checks`.

This module holds the problem (:class:`PlanningProblem`, :class:`SolverOptions`) and is where every
contract type can be imported from: the fleet types live in :mod:`hierfedlora.planner.fleet_types`, the
cost model in :mod:`hierfedlora.planner.cost_model`, the convergence constants in
:mod:`hierfedlora.planner.convergence_params`, the schema version in :mod:`hierfedlora.planner.schema` and
the outcome types (``Plan``, ``RoundReport``, ...) in :mod:`hierfedlora.planner.outcomes`; all are
re-exported here.

Examples
--------
>>> d = DeviceProfile(device_id="d0", label_counts=(3, 1), compute_scale=2.0,
...                   memory_bytes=2**30, uplink_mbps=10.0, downlink_mbps=50.0)
>>> d.num_samples
4
>>> DeviceProfile(device_id="d1", label_counts=(3, 1), compute_scale=float("nan"),
...               memory_bytes=2**30, uplink_mbps=10.0, downlink_mbps=50.0)
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: compute_scale must be a finite number > 0; got nan
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from hierfedlora.planner.convergence_params import (
    CALIBRATION_SOURCE,
    CONVERGENCE_RULES,
    REFERENCE_LOSS_GAP,
    ConvergenceParams,
    target_for_loss,
)
from hierfedlora.planner.cost_model import COST_MODEL_LIMITS, COST_MODEL_RULES, CostModel, with_num_labels
from hierfedlora.planner.errors import Issue, raise_if_any
from hierfedlora.planner.fleet_types import (
    DATASET_RULES,
    DEVICE_LIMITS,
    DEVICE_RULES,
    FLEET_RULES,
    DatasetSpec,
    DeviceProfile,
    Fleet,
)
from hierfedlora.planner.rules import (
    FINITE_NON_NEGATIVE,
    FINITE_POSITIVE,
    FRACTION,
    MAX_COUNT,
    MAX_STEP_S,
    MAX_TIME_S,
    NON_NEGATIVE_INT,
    OPTIONAL_FINITE_POSITIVE,
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    Rule,
    check_fields,
    check_limits,
    int_tuple,
    optional,
)
from hierfedlora.planner.schema import SCHEMA_RULE, SCHEMA_VERSION

__all__ = [
    "AGGREGATION_RULES",
    "COST_MODEL_RULES",
    "DEVICE_RULES",
    "SCHEMA_VERSION",
    "ConvergenceParams",
    "CostModel",
    "DatasetSpec",
    "DeviceProfile",
    "Fleet",
    "GroupingMethod",
    "CALIBRATION_SOURCE",
    "REFERENCE_LOSS_GAP",
    "target_for_loss",
    "with_num_labels",
    "PROBLEM_LIMITS",
    "PlanningProblem",
    "SolverOptions",
    # defined in fleet_types, cost_model, convergence_params and schema; importable from here as before
    "SCHEMA_RULE",
    "CONVERGENCE_RULES",
    "COST_MODEL_LIMITS",
    "DATASET_RULES",
    "DEVICE_LIMITS",
    "FLEET_RULES",
]

AGGREGATION_RULES = ("fedavg", "ffa", "fedex", "flora", "lora-fair", "hetlora")
"""The aggregation rules ``planner.costs`` (C9) prices and ``runtime.aggregation_rules`` implements."""

AGGREGATION_RULE = Rule(
    f"one of {', '.join(AGGREGATION_RULES)}", lambda v: v in AGGREGATION_RULES, ("FedAvg", "fedprox", "", None)
)

GroupingMethod = Literal["auto", "cpsat", "flow", "random"]


SOLVER_LIMITS = {"seed": 2**31 - 1, "threads": 1024, "time_limit_s": 1e7, "cpsat_deterministic_time_s": 1e7}
"""Upper bounds of solver options: CP-SAT and HiGHS take a 32-bit seed (a larger one was a solver failure)."""

SOLVER_RULES: dict[str, Rule] = {
    "time_limit_s": FINITE_POSITIVE,
    "relative_gap_tolerance": FRACTION,
    "threads": POSITIVE_INT,
    "seed": NON_NEGATIVE_INT,
    "grouping_method": Rule(
        "one of 'auto', 'cpsat', 'flow', 'random'", lambda v: v in ("auto", "cpsat", "flow", "random"), ("kmeans", 1)
    ),
    "exact_grouping_max_devices": POSITIVE_INT,
    "cpsat_deterministic_time_s": FINITE_POSITIVE,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SolverOptions:
    """How hard and how reproducibly to solve.

    ``grouping_method="auto"`` uses the exact CP-SAT model up to
    ``exact_grouping_max_devices`` devices and the scalable flow method beyond.

    Searches stop on work, so one problem and seed give one plan on a loaded or an idle host:
    the flow grouping on its candidate evaluations, CP-SAT on ``cpsat_deterministic_time_s`` of
    its deterministic time (CP-SAT's work units, about a second each on an idle core) with
    ``threads`` workers (one, the default, is deterministic; more run CP-SAT's interleaved search,
    which its authors state is deterministic for any number of workers but call experimental).
    ``time_limit_s`` is a wall-clock safety cap on each solver call (grouping and assignment
    separately); a plan it stopped says so (``Limit.TIME``) and may differ from run to run.
    """

    time_limit_s: float = 600.0
    relative_gap_tolerance: float = 1e-4
    threads: int = 1
    seed: int = 0
    grouping_method: GroupingMethod = "auto"
    exact_grouping_max_devices: int = 60
    cpsat_deterministic_time_s: float = 10.0

    def __post_init__(self) -> None:
        raise_if_any(check_fields(self, SOLVER_RULES) or check_limits(self, SOLVER_LIMITS, SOLVER_RULES))


PROBLEM_RULES: dict[str, Rule] = {
    "num_groups": OPTIONAL_POSITIVE_INT,
    "min_group_size": OPTIONAL_POSITIVE_INT,
    "max_group_size": OPTIONAL_POSITIVE_INT,
    "min_group_samples": optional(NON_NEGATIVE_INT),
    "max_group_samples": OPTIONAL_POSITIVE_INT,
    "max_speed_ratio": Rule(
        "a finite number >= 1, or null",
        lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 1),
        (0.5, math.nan, math.inf, "2"),
    ),
    "depth_choices": optional(int_tuple(1)),
    "intra_rounds_choices": int_tuple(1),
    "local_steps": POSITIVE_INT,
    "batch_size": OPTIONAL_POSITIVE_INT,
    "round_budget_s": OPTIONAL_FINITE_POSITIVE,
    "traffic_budget_bytes": OPTIONAL_FINITE_POSITIVE,
    "backhaul_mbps": FINITE_POSITIVE,
    "server_ingress_mbps": OPTIONAL_FINITE_POSITIVE,
    "intra_latency_s": FINITE_NON_NEGATIVE,
    "global_latency_s": FINITE_NON_NEGATIVE,
    "speed_spread_weight": FINITE_NON_NEGATIVE,
    "aggregation": AGGREGATION_RULE,
    "schema_version": SCHEMA_RULE,
}


PROBLEM_LIMITS: dict[str, float] = {
    "num_groups": MAX_COUNT,
    "min_group_size": MAX_COUNT,
    "max_group_size": MAX_COUNT,
    "min_group_samples": MAX_COUNT,
    "max_group_samples": MAX_COUNT,
    "max_speed_ratio": 1e12,
    "depth_choices": 10_000,
    "intra_rounds_choices": 10**6,
    "local_steps": 10**6,
    "batch_size": 2**20,
    "round_budget_s": MAX_TIME_S,
    "traffic_budget_bytes": 1e18,
    "backhaul_mbps": 1e7,
    "server_ingress_mbps": 1e7,
    "intra_latency_s": MAX_STEP_S,
    "global_latency_s": MAX_STEP_S,
    "speed_spread_weight": 1e6,
}
"""Upper bounds of :data:`PROBLEM_RULES` fields, those of a plan's groups and the cost model's batch among them:
past them a value can only be a mistake, and it overflowed int64 arrays (a 20-digit ``max_group_samples``) or
surfaced as a plan field's error (``predicted_intra_round_s``) instead of the field's own."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PlanningProblem:
    """Everything the planner needs; immutable so what-if sweeps re-solve variations.

    Parameters
    ----------
    devices : tuple of DeviceProfile
    cost_model : CostModel
    num_groups : int or None
        Number of groups K; ``None`` picks ``round(N / 10)`` within the size bounds.
    min_group_size, max_group_size : int or None
        Devices per group (bounds inclusive). When both are ``None`` (the default), groups are
        balanced: ``floor(N / K)`` to ``ceil(N / K)`` devices. When one is set, the other side
        is open (at least 1, at most N).
    min_group_samples, max_group_samples : int or None
        Training samples per group (bounds inclusive).
    max_speed_ratio : float or None
        Side constraint: within a group, slowest ``compute_scale`` / fastest <= this.
    depth_choices : tuple of int or None
        Allowed LoRA depths (top layers fine-tuned); ``None`` is ``1..num_layers``.
    intra_rounds_choices : tuple of int
        Allowed group aggregations per global round.
    local_steps : int
        Local optimizer steps between two group aggregations.
    batch_size : int or None
        Samples per local step; ``None`` uses the cost model's.
    round_budget_s, traffic_budget_bytes : float or None
        Per-global-round limits on simulated time and on bytes moved (all devices, up + down).
    backhaul_mbps : float
        Link from each group aggregator to the server (megabits per second).
    server_ingress_mbps : float or None
        The server's own link, shared by every group aggregator's transfers, which queue on it
        (``planner.costs`` (C6)); ``None`` (the default) never limits.
    intra_latency_s, global_latency_s : float
        Fixed latency of one intra-group aggregation (edge, LAN) and of one global
        aggregation (WAN round trip and server synchronisation), in seconds.
    speed_spread_weight : float
        Weight of the compute-speed spread term in the grouping objective (0 ignores it).
    aggregation : str
        The aggregation rule the plan will run under (one of :data:`AGGREGATION_RULES`): every
        exchange is priced with its upload and download bytes (``planner.costs`` (C9)), so the
        depths and intra_rounds are chosen for it; ``"fedex"`` needs
        ``cost_model.dense_bytes_per_layer``.
    convergence : ConvergenceParams
    solver : SolverOptions
    """

    devices: tuple[DeviceProfile, ...]
    cost_model: CostModel
    num_groups: int | None = None
    min_group_size: int | None = None
    max_group_size: int | None = None
    min_group_samples: int | None = None
    max_group_samples: int | None = None
    max_speed_ratio: float | None = None
    depth_choices: tuple[int, ...] | None = None
    intra_rounds_choices: tuple[int, ...] = (1, 2, 4, 8)
    local_steps: int = 5
    batch_size: int | None = None
    round_budget_s: float | None = None
    traffic_budget_bytes: float | None = None
    backhaul_mbps: float = 20.0
    server_ingress_mbps: float | None = None
    intra_latency_s: float = 0.05
    global_latency_s: float = 1.0
    speed_spread_weight: float = 0.0
    aggregation: str = "fedavg"
    convergence: ConvergenceParams = dataclasses.field(default_factory=ConvergenceParams)
    solver: SolverOptions = dataclasses.field(default_factory=SolverOptions)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, PROBLEM_RULES)
        issues += check_limits(self, PROBLEM_LIMITS, PROBLEM_RULES, broken=frozenset(i.path for i in issues))
        if not (isinstance(self.devices, tuple) and self.devices):
            issues.append(Issue("devices", "a non-empty list of devices", self.devices))
        raise_if_any(issues)

    @property
    def effective_batch_size(self) -> int:
        """``batch_size``, or the cost model's when absent."""
        return self.batch_size if self.batch_size is not None else self.cost_model.batch_size

    @property
    def effective_depth_choices(self) -> tuple[int, ...]:
        """``depth_choices``, or every depth ``1..num_layers`` when absent (sorted, unique)."""
        if self.depth_choices is None:
            return tuple(range(1, self.cost_model.num_layers + 1))
        return tuple(sorted(set(self.depth_choices)))


_OUTCOME_TYPES = ("Group", "GroupRoundResult", "Limit", "Plan", "RoundReport", "Skew", "SolveStatus")


def __getattr__(name: str) -> object:
    # The outcome types live in planner.outcomes (which imports this module); they are reachable
    # from here too, so ``from hierfedlora.planner.types import Plan`` works.
    if name in _OUTCOME_TYPES:
        from hierfedlora.planner import outcomes

        return getattr(outcomes, name)
    raise AttributeError(f"module 'hierfedlora.planner.types' has no attribute {name!r}")
