"""Outcome contract types: solver status, groups and plans.

A :class:`Plan` exists only with a feasible solution. As MathOpt's results do, it checks
that ``status`` is ``OPTIMAL`` or ``FEASIBLE``, that ``limit`` is set if and only if the
status is ``FEASIBLE``, and that every device is in exactly one group. ``relative_gap`` is
derived from ``objective_value`` and ``dual_bound``, never stored.

The round reports (:class:`RoundReport`, :class:`GroupRoundResult`) live in :mod:`hierfedlora.planner.round_report`
and are importable from here.

Examples
--------
>>> g = Group(group_id=0, device_ids=("a", "b"), depth=2, intra_rounds=4, local_steps=5,
...           label_skew=Skew(kl=0.01, l1=0.1, hellinger=0.05), predicted_intra_round_s=3.0)
>>> p = Plan(groups=(g,), predicted_round_time_s=12.5, predicted_rounds_to_target=40.0,
...          objective_value=500.0, dual_bound=490.0, status=SolveStatus.FEASIBLE,
...          limit=Limit.TIME, solve_time_s=1.0, solver="cpsat+highs", seed=0)
>>> round(p.relative_gap, 3)
0.02
>>> p.plan_id == dataclasses.replace(p, solve_time_s=9.0).plan_id  # content, not timing
True
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import json
import math

from hierfedlora.planner.errors import Issue, raise_if_any
from hierfedlora.planner.round_report import GROUP_ROUND_RULES, REPORT_RULES, GroupRoundResult, RoundReport
from hierfedlora.planner.rules import (
    ANY_STRING,
    FINITE_NON_NEGATIVE,
    FINITE_POSITIVE,
    MAX_TIME_S,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    Rule,
    check_fields,
    check_limits,
    is_int,
    is_number,
)
from hierfedlora.planner.types import AGGREGATION_RULE, SCHEMA_RULE, SCHEMA_VERSION

__all__ = [
    "GroupRoundResult",
    "Group",
    "Grouping",
    "Limit",
    "Plan",
    "RoundReport",
    "Skew",
    "SolveStatus",
    # defined in planner.round_report; importable from here as before
    "GROUP_ROUND_RULES",
    "REPORT_RULES",
]


class SolveStatus(enum.Enum):
    """Why the solver stopped (kept apart from which limit stopped it)."""

    OPTIMAL = "OPTIMAL"
    FEASIBLE = "FEASIBLE"
    INFEASIBLE = "INFEASIBLE"
    NO_SOLUTION = "NO_SOLUTION"


class Limit(enum.Enum):
    """Which limit ended a search early.

    ``TIME``: the wall-clock safety cap (``SolverOptions.time_limit_s``): the result may depend on
    the host's load. ``NODE``: a work limit (the flow grouping's candidate evaluations, CP-SAT's
    deterministic time, Dinkelbach steps): the same problem and seed stop at the same point on any
    host. ``INTERRUPTED``: the user stopped it.
    """

    TIME = "TIME"
    NODE = "NODE"
    INTERRUPTED = "INTERRUPTED"


SKEW_RULES = {"kl": FINITE_NON_NEGATIVE, "l1": FINITE_NON_NEGATIVE, "hellinger": FINITE_NON_NEGATIVE}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Skew:
    """Divergence of a group's pooled label distribution from the global one.

    ``kl`` is KL(group || global) in nats, ``l1`` the L1 distance (twice total variation,
    in [0, 2]), ``hellinger`` the Hellinger distance (in [0, 1]).
    """

    kl: float
    l1: float
    hellinger: float

    def __post_init__(self) -> None:
        raise_if_any(check_fields(self, SKEW_RULES))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Grouping:
    """The outcome of grouping (``planner.grouping``), before depths are assigned.

    ``members[k]`` holds the *positions* (into ``problem.devices``) of group k's devices,
    sorted; groups are ordered by their smallest member. ``objective`` and ``bound`` are in
    the grouping objective's units (see ``planner/grouping/__init__.py``); ``bound`` is a proven lower bound.
    """

    members: tuple[tuple[int, ...], ...]
    objective: float
    bound: float
    status: SolveStatus
    limit: Limit | None
    solve_time_s: float
    method: str

    @property
    def relative_gap(self) -> float:
        """``(objective - bound) / max(objective, 1e-9)``."""
        return max(0.0, self.objective - self.bound) / max(abs(self.objective), 1e-9)


GROUP_RULES: dict[str, Rule] = {
    "group_id": NON_NEGATIVE_INT,
    "device_ids": Rule(
        "a non-empty list of device ids (strings)",
        lambda v: isinstance(v, tuple) and len(v) > 0 and all(isinstance(x, str) and x for x in v),
        ((), ("",), (3,)),
    ),
    "depth": POSITIVE_INT,
    "intra_rounds": POSITIVE_INT,
    "local_steps": POSITIVE_INT,
    "predicted_intra_round_s": FINITE_NON_NEGATIVE,
    "predicted_traffic_bytes": NON_NEGATIVE_INT,
    "predicted_peak_memory_bytes": NON_NEGATIVE_INT,
    "layers": Rule(
        "a non-empty list of distinct layer indices >= 0 in ascending order, or null (the top `depth` layers)",
        lambda v: (
            v is None
            or (
                isinstance(v, tuple)
                and len(v) > 0
                and all(is_int(x) and x >= 0 for x in v)
                and all(a < b for a, b in itertools.pairwise(v))
            )
        ),
        ((), (-1,), (2, 1), (1, 1), (1.5,), 3),
    ),
    "lora_rank": Rule(
        f"{OPTIONAL_POSITIVE_INT.expected} (null: the run's full rank)",
        OPTIONAL_POSITIVE_INT.accepts,
        OPTIONAL_POSITIVE_INT.bad_values,
    ),
    "sequential": Rule("true or false", lambda v: isinstance(v, bool), (1, "yes", None)),
}


GROUP_LIMITS: dict[str, float] = {
    "depth": 10_000,
    "intra_rounds": 10**6,
    "local_steps": 10**6,
    "predicted_intra_round_s": MAX_TIME_S,
}
"""Upper bounds of :data:`GROUP_RULES` fields (``rules.check_limits``)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """One group of a plan: its devices and what they do every global round.

    ``predicted_intra_round_s`` is the predicted time of one intra-group round (local
    steps of the slowest member plus its adapter exchange); ``predicted_traffic_bytes`` the bytes
    its devices move per global round, up plus down (``planner.costs`` (C8)), and
    ``predicted_peak_memory_bytes`` the training memory each member needs at ``depth`` ((C4)).
    Both are 0 in plans written before they existed.

    Two optional fields describe heterogeneous-LoRA baselines (``validation.heterogeneous``);
    ``None`` leaves a group exactly as before:

    - ``layers``: the exact layer indices (0 next to the embeddings) the group fine-tunes, for
      non-contiguous sets (FedRA). ``depth`` must then equal ``num_layers - min(layers)``, since
      backward reaches the lowest trained layer; ``planner.plan_checks`` checks it against a model.
    - ``lora_rank``: the group trains only the first ``lora_rank`` LoRA rank components (HetLoRA);
      ``None`` is the run's full rank.

    ``sequential`` (FedGSP, ``validation.fedgsp``): within each intra-group round the devices train one
    after another, device ``i`` starting from device ``i - 1``'s state, and the group's state is the
    last one's; its intra round then lasts the *sum* of its devices' times (``costs`` (C5)). ``False``
    (the default) is the parallel group every other method runs.
    """

    group_id: int
    device_ids: tuple[str, ...]
    depth: int
    intra_rounds: int
    local_steps: int
    label_skew: Skew
    predicted_intra_round_s: float = 0.0
    predicted_traffic_bytes: int = 0
    predicted_peak_memory_bytes: int = 0
    layers: tuple[int, ...] | None = None
    lora_rank: int | None = None
    sequential: bool = False

    def __post_init__(self) -> None:
        raise_if_any(check_fields(self, GROUP_RULES) + check_limits(self, GROUP_LIMITS, GROUP_RULES))

    @property
    def trained_layers(self) -> int:
        """How many layers carry live LoRA: ``len(layers)``, or ``depth`` when ``layers`` is null."""
        return self.depth if self.layers is None else len(self.layers)


def _group_content(group: Group) -> list[object]:
    """A group's part of the plan id; the optional fields only when set, so older ids stay the same."""
    content: list[object] = [group.device_ids, group.depth, group.intra_rounds, group.local_steps]
    extra = {"layers": group.layers, "lora_rank": group.lora_rank, "sequential": group.sequential or None}
    if any(value is not None for value in extra.values()):
        content.append({name: value for name, value in extra.items() if value is not None})
    return content


PLAN_RULES: dict[str, Rule] = {
    "predicted_round_time_s": FINITE_NON_NEGATIVE,
    "predicted_rounds_to_target": FINITE_POSITIVE,
    "objective_value": Rule("a finite number", lambda v: is_number(v) and math.isfinite(v), (math.nan, math.inf)),
    "dual_bound": Rule("a finite number", lambda v: is_number(v) and math.isfinite(v), (math.nan, -math.inf)),
    "solve_time_s": FINITE_NON_NEGATIVE,
    "predicted_traffic_bytes": NON_NEGATIVE_INT,
    "predicted_backhaul_bytes": NON_NEGATIVE_INT,
    "solver": NON_EMPTY_STRING,
    "seed": NON_NEGATIVE_INT,
    "batch_size": POSITIVE_INT,
    "model_name": ANY_STRING,
    "cost_model_sha256": ANY_STRING,
    "fleet_sha256": ANY_STRING,
    "grouping_objective": Rule("a finite number", lambda v: is_number(v) and math.isfinite(v), (math.nan,)),
    "grouping_bound": Rule("a finite number", lambda v: is_number(v) and math.isfinite(v), (math.inf,)),
    "reason": ANY_STRING,
    "aggregation": AGGREGATION_RULE,
    "schema_version": SCHEMA_RULE,
}

PLAN_LIMITS: dict[str, float] = {
    "predicted_round_time_s": MAX_TIME_S,
    "predicted_rounds_to_target": MAX_TIME_S,
    "objective_value": MAX_TIME_S,
    "dual_bound": MAX_TIME_S,
    "solve_time_s": MAX_TIME_S,
    "seed": 2**63 - 1,
    "batch_size": 2**20,
    "grouping_objective": MAX_TIME_S,
    "grouping_bound": MAX_TIME_S,
}
"""Upper bounds of :data:`PLAN_RULES` fields (``rules.check_limits``)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A feasible plan: groups with their depth and intra-group rounds, and provenance.

    ``objective_value`` is the predicted time to reach the target (seconds of simulated
    time); ``dual_bound`` a proven lower bound on it. ``plan_id`` is derived from the
    content (groups, model, fleet, objective), so the same inputs give the same id;
    ``parent_plan_id`` names the plan this one re-planned.

    ``predicted_traffic_bytes`` is what all devices move per global round (up plus down, the sum
    of the groups'); ``predicted_backhaul_bytes`` what the group aggregators exchange with the
    server per global round (each sends its merged adapters and receives the global ones).
    ``target`` says what "time to target" means: the loss level the convergence model's
    rounds reach (``ConvergenceParams.describe_target``). All three are empty in older plan files.
    ``aggregation`` is the rule the predictions are priced under (``PlanningProblem.aggregation``,
    ``planner.costs`` (C9)); ``"fedavg"`` in older plan files, which were all priced under FedAvg.
    """

    groups: tuple[Group, ...]
    predicted_round_time_s: float
    predicted_rounds_to_target: float
    predicted_traffic_bytes: int = 0
    predicted_backhaul_bytes: int = 0
    target: str = ""
    objective_value: float
    dual_bound: float
    status: SolveStatus
    limit: Limit | None = None
    solve_time_s: float
    solver: str
    seed: int
    batch_size: int = 16
    model_name: str = ""
    cost_model_sha256: str = ""
    fleet_sha256: str = ""
    grouping_objective: float = 0.0
    grouping_bound: float = 0.0
    parent_plan_id: str | None = None
    reason: str = ""
    aggregation: str = "fedavg"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, PLAN_RULES) + check_limits(self, PLAN_LIMITS, PLAN_RULES)
        if not isinstance(self.status, SolveStatus) or self.status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
            issues.append(Issue("status", "OPTIMAL or FEASIBLE (a plan needs a feasible solution)", self.status))
        else:
            optimal = self.status is SolveStatus.OPTIMAL  # a limit ends a search early; OPTIMAL finished it
            if (self.limit is None) != optimal:
                expected = "null" if optimal else "a Limit (TIME, NODE or INTERRUPTED)"
                issues.append(Issue("limit", f"{expected} when status is {self.status.name}", self.limit))
        if not self.groups:
            issues.append(Issue("groups", "a non-empty list of groups", self.groups))
        seen: dict[str, int] = {}
        for idx, group in enumerate(self.groups):
            for device_id in group.device_ids:
                if device_id in seen:
                    issues.append(
                        Issue(
                            f"groups[{idx}].device_ids",
                            f"devices in exactly one group ({device_id!r} is also in groups[{seen[device_id]}])",
                            device_id,
                        )
                    )
                seen[device_id] = idx
        if [g.group_id for g in self.groups] != list(range(len(self.groups))):
            issues.append(Issue("groups", "group_id 0, 1, ... in order", [g.group_id for g in self.groups]))
        raise_if_any(issues)

    @property
    def relative_gap(self) -> float:
        """``|objective - bound| / max(|objective|, 1e-9)``; 0 for a proven optimum."""
        return abs(self.objective_value - self.dual_bound) / max(abs(self.objective_value), 1e-9)

    @property
    def grouping_relative_gap(self) -> float:
        """The grouping's own gap, ``(objective - bound) / max(objective, 1e-9)``."""
        return max(0.0, self.grouping_objective - self.grouping_bound) / max(abs(self.grouping_objective), 1e-9)

    @property
    def predicted_peak_memory_bytes(self) -> int:
        """The most training memory any device of the plan needs (the largest group's (C4))."""
        return max(g.predicted_peak_memory_bytes for g in self.groups)

    @property
    def device_ids(self) -> tuple[str, ...]:
        """Every device in the plan, group by group."""
        return tuple(d for g in self.groups for d in g.device_ids)

    @property
    def plan_id(self) -> str:
        """Content hash (12 hex digits) of groups, provenance, objective and rule; not of timing.

        The rule counts only when it is not FedAvg, so plans written before it existed keep their ids.
        """
        content: dict[str, object] = {
            "groups": [_group_content(g) for g in self.groups],
            "model": self.cost_model_sha256,
            "fleet": self.fleet_sha256,
            "batch_size": self.batch_size,
            "parent": self.parent_plan_id,
            "objective": round(self.objective_value, 6),
        }
        if self.aggregation != "fedavg":
            content["aggregation"] = self.aggregation
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return digest[:12]
