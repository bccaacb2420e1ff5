"""Input contract types: devices, fleets, measured costs and the planning problem.

All are frozen, slotted, keyword-only dataclasses with tuples (not lists) and units in
field names. ``__post_init__`` checks every field against its declared :class:`Rule` and
raises one :class:`InvalidInputError` listing every broken field. Rules that span several
objects (equal class counts across devices, depth choices within the model's layers,
unique ids) live in :mod:`hierfedlora.planner.checks`.

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

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.rules import (
    ANY_STRING,
    FINITE_NON_NEGATIVE,
    FINITE_POSITIVE,
    FRACTION,
    MAX_BYTES,
    MAX_COUNT,
    MAX_STEP_S,
    MAX_TIME_S,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    OPTIONAL_FINITE_POSITIVE,
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    Rule,
    all_ints_at_least,
    check_fields,
    check_limits,
    finite_tuple,
    int_tuple,
    is_int,
    optional,
)

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
]

SCHEMA_VERSION = 1
"""Version of every JSON file this package writes; readers refuse other versions."""

AGGREGATION_RULES = ("fedavg", "ffa", "fedex", "flora", "lora-fair", "hetlora")
"""The aggregation rules ``planner.costs`` (C9) prices and ``runtime.aggregation_rules`` implements."""

AGGREGATION_RULE = Rule(
    f"one of {', '.join(AGGREGATION_RULES)}", lambda v: v in AGGREGATION_RULES, ("FedAvg", "fedprox", "", None)
)

GroupingMethod = Literal["auto", "cpsat", "flow", "random"]


def _raise_if(issues: list[Issue]) -> None:
    if issues:
        raise InvalidInputError(issues)


def _windows_ok(value: object) -> bool:
    return value is None or (
        isinstance(value, tuple)
        and all(
            isinstance(w, tuple)
            and len(w) == 2
            and all(isinstance(x, int | float) and math.isfinite(x) and x >= 0 for x in w)
            and w[0] < w[1]
            for w in value
        )
    )


SCHEMA_RULE = Rule(f"{SCHEMA_VERSION} (this package's schema version)", lambda v: v == SCHEMA_VERSION, (0, 2, "1"))

DEVICE_RULES: dict[str, Rule] = {
    "device_id": NON_EMPTY_STRING,
    "label_counts": Rule(
        "a non-empty list of integers >= 0 with at least one sample",
        lambda v: isinstance(v, tuple) and len(v) > 0 and all_ints_at_least(v, 0) and sum(v) > 0,
        ((), (0, 0), (-1, 2), (1.5,), "3"),
    ),
    "compute_scale": FINITE_POSITIVE,
    "memory_bytes": POSITIVE_INT,
    "uplink_mbps": FINITE_POSITIVE,
    "downlink_mbps": FINITE_POSITIVE,
    "tier": optional(NON_EMPTY_STRING),
    "availability": Rule(
        "null, or a list of [start_s, end_s] windows with 0 <= start_s < end_s",
        _windows_ok,
        (((5.0, 1.0),), ((math.nan, 1.0),), "always"),
    ),
}


DEVICE_LIMITS: dict[str, float] = {
    "label_counts": MAX_COUNT,
    "compute_scale": 1e6,
    "memory_bytes": MAX_BYTES,
    "uplink_mbps": 1e7,
    "downlink_mbps": 1e7,
}
"""Upper bounds of :data:`DEVICE_RULES` fields (``rules.check_limits``)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceProfile:
    """One device: its data (label counts) and how it differs from the profiling host.

    Parameters
    ----------
    device_id : str
        Unique name within a fleet.
    label_counts : tuple of int
        Training samples the device holds, per class (same class order fleet-wide).
    compute_scale : float
        Multiplier on the host's measured step time: 1.0 is as fast as the host that
        measured the :class:`CostModel`, 3.0 is three times slower.
    memory_bytes : int
        Memory the device can give to fine-tuning (bytes).
    uplink_mbps, downlink_mbps : float
        Link bandwidths to its group aggregator (megabits per second).
    tier : str or None
        Name of the device class it was drawn from (informational).
    availability : tuple of (start_s, end_s) or None
        Windows of simulated time when the device is online; ``None`` means always.
    """

    device_id: str
    label_counts: tuple[int, ...]
    compute_scale: float
    memory_bytes: int
    uplink_mbps: float
    downlink_mbps: float
    tier: str | None = None
    availability: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        issues = check_fields(self, DEVICE_RULES)  # each rule runs once: fleets hold a million devices
        broken = frozenset(issue.path for issue in issues)
        _raise_if(issues + check_limits(self, DEVICE_LIMITS, DEVICE_RULES, broken=broken))

    @property
    def num_samples(self) -> int:
        """Total training samples on the device."""
        return sum(self.label_counts)


DATASET_RULES: dict[str, Rule] = {
    "kind": Rule(
        "one of 'wordnet', 'janeausten', 'csv', 'jsonl', 'folder'",
        lambda v: v in ("wordnet", "janeausten", "csv", "jsonl", "folder"),
        ("parquet", 3),
    ),
    "path": NON_EMPTY_STRING,
    "text_field": NON_EMPTY_STRING,
    "label_field": NON_EMPTY_STRING,
    "num_samples": POSITIVE_INT,
    "sha256": ANY_STRING,
    "test_indices": int_tuple(0, non_empty=False),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSpec:
    """Where a fleet's samples come from, so the runtime can load exactly them.

    ``sha256`` is the digest of the data file (empty when not recorded); ``test_indices``
    is the held-out evaluation split (row positions in the file, never given to devices).
    """

    kind: Literal["wordnet", "janeausten", "csv", "jsonl", "folder"]
    path: str
    text_field: str = "text"
    label_field: str = "label"
    num_samples: int
    sha256: str = ""
    test_indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _raise_if(check_fields(self, DATASET_RULES))


FLEET_RULES: dict[str, Rule] = {
    "schema_version": SCHEMA_RULE,
    "class_names": Rule(
        "a non-empty list of strings",
        lambda v: isinstance(v, tuple) and len(v) > 0 and all(isinstance(x, str) for x in v),
        ((), (1, 2)),
    ),
    "partition": ANY_STRING,
    "seed": NON_NEGATIVE_INT,
    "sample_indices": Rule(
        "a list with a list of row positions per device, or empty",
        lambda v: isinstance(v, tuple) and all(isinstance(x, tuple) for x in v),
        (None, True, (None,)),
    ),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """Devices plus (optionally) the data partition that produced their label counts.

    ``sample_indices[i]`` holds the row positions of device ``devices[i]``'s samples in the
    data set; it is empty when the fleet was written by hand or imported from a trace.
    """

    devices: tuple[DeviceProfile, ...]
    class_names: tuple[str, ...]
    dataset: DatasetSpec | None = None
    sample_indices: tuple[tuple[int, ...], ...] = ()
    partition: str = ""
    seed: int = 0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, FLEET_RULES)
        if not self.devices:
            issues.append(Issue("devices", "a non-empty list of devices", self.devices))
        lists = FLEET_RULES["sample_indices"].accepts(self.sample_indices) and isinstance(self.devices, tuple)
        if lists and self.sample_indices and len(self.sample_indices) != len(self.devices):
            issues.append(
                Issue(
                    "sample_indices", f"one list per device ({len(self.devices)})", f"{len(self.sample_indices)} lists"
                )
            )
        _raise_if(issues)


COST_MODEL_RULES: dict[str, Rule] = {
    "model_name": NON_EMPTY_STRING,
    "model_sha256": ANY_STRING,
    "measured_on": ANY_STRING,
    "num_layers": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "seq_len": POSITIVE_INT,
    "embedding_forward_s": FINITE_NON_NEGATIVE,
    "layer_forward_s": finite_tuple(positive=True),
    "layer_backward_s": finite_tuple(positive=True),
    "head_step_s": FINITE_NON_NEGATIVE,
    "layer_optimizer_s": FINITE_NON_NEGATIVE,
    "adapter_bytes_per_layer": POSITIVE_INT,
    "head_bytes": NON_NEGATIVE_INT,
    "activation_bytes_per_sample_per_layer": POSITIVE_INT,
    "optimizer_bytes_per_layer": NON_NEGATIVE_INT,
    "base_model_bytes": POSITIVE_INT,
    "lora_rank": POSITIVE_INT,
    "num_labels": OPTIONAL_POSITIVE_INT,
    "dense_bytes_per_layer": OPTIONAL_POSITIVE_INT,
    "schema_version": SCHEMA_RULE,
}

COST_MODEL_LIMITS: dict[str, float] = {
    "num_layers": 10_000,
    "batch_size": 2**20,
    "seq_len": 2**24,
    "embedding_forward_s": MAX_STEP_S,
    "layer_forward_s": MAX_STEP_S,
    "layer_backward_s": MAX_STEP_S,
    "head_step_s": MAX_STEP_S,
    "layer_optimizer_s": MAX_STEP_S,
    "adapter_bytes_per_layer": MAX_BYTES,
    "head_bytes": MAX_BYTES,
    "activation_bytes_per_sample_per_layer": MAX_BYTES,
    "optimizer_bytes_per_layer": MAX_BYTES,
    "base_model_bytes": MAX_BYTES,
    "lora_rank": 2**16,
    "dense_bytes_per_layer": MAX_BYTES,
}
"""Upper bounds of :data:`COST_MODEL_RULES` fields: a measured per-layer time past ``MAX_STEP_S`` seconds
per batch is a mistake, and would reach the solver as a coefficient it cannot handle."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CostModel:
    """Per-layer costs measured on one host (``models.profiling``); plain numbers.

    Layer tuples run from the layer next to the embeddings (index 0) to the output layer
    (index ``num_layers - 1``). Times are seconds **per sample** at ``batch_size`` and
    ``seq_len`` on the host named in ``measured_on``, except ``layer_optimizer_s``, which is
    seconds per optimizer step per trained layer.

    Parameters
    ----------
    embedding_forward_s : float
        Embedding lookup and norm, per sample.
    layer_forward_s, layer_backward_s : tuple of float
        Forward of each layer; backward of each layer when it carries LoRA (input and
        adapter gradients), per sample.
    head_step_s : float
        Classification head forward + backward, per sample.
    adapter_bytes_per_layer, head_bytes : int
        Bytes of one layer's LoRA tensors and of the trainable head (what travels).
    activation_bytes_per_sample_per_layer : int
        Activations a trained layer keeps for backward, per sample.
    optimizer_bytes_per_layer : int
        Gradient and optimizer state for one layer's adapters.
    base_model_bytes : int
        Frozen weights held in memory.
    num_labels : int or None
        Classes of the head whose ``head_bytes`` these are; a fleet with another class count
        is refused (``checks.check_problem``) until :func:`with_num_labels` re-sizes the head.
        ``None`` in cost models written before it existed (then nothing can be checked).
    dense_bytes_per_layer : int or None
        Bytes of one layer's dense LoRA target matrices (the largest layer's): what FedEx-LoRA's
        residual moves per trained layer (``planner.costs`` (C9)). ``None`` in cost models written
        before it existed; planning under ``aggregation="fedex"`` needs it.
    """

    model_name: str
    model_sha256: str = ""
    measured_on: str = ""
    num_layers: int
    batch_size: int
    seq_len: int
    embedding_forward_s: float
    layer_forward_s: tuple[float, ...]
    layer_backward_s: tuple[float, ...]
    head_step_s: float
    layer_optimizer_s: float
    adapter_bytes_per_layer: int
    head_bytes: int
    activation_bytes_per_sample_per_layer: int
    optimizer_bytes_per_layer: int
    base_model_bytes: int
    lora_rank: int = 8
    num_labels: int | None = None
    dense_bytes_per_layer: int | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, COST_MODEL_RULES) + check_limits(self, COST_MODEL_LIMITS, COST_MODEL_RULES)
        if is_int(self.num_layers):
            for name in ("layer_forward_s", "layer_backward_s"):
                value = getattr(self, name)
                if isinstance(value, tuple) and len(value) != self.num_layers:
                    issues.append(Issue(name, f"one entry per layer ({self.num_layers})", f"{len(value)} entries"))
        _raise_if(issues)


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
        _raise_if(check_fields(self, SOLVER_RULES) or check_limits(self, SOLVER_LIMITS, SOLVER_RULES))


REFERENCE_LOSS_GAP = 0.1
"""The loss gap ``reference_rounds`` is defined at: 10% of an untrained model's (``planner.refit`` (F2))."""

CALIBRATION_SOURCE = (
    "fitted by 'hierfedlora calibrate' (planner.refit.pooled_refit) to the four baseline runs of the 'pilot' "
    "experiment preset (docs/results/pilot: 80 devices of the 'paper' mix, WordNet at Dirichlet alpha 0.3, "
    "seed 7, all-MiniLM-L6-v2 with LoRA r=8, batch 8, 24 tokens, 2 local steps; 2026-12-05), rounded to three digits"
)
"""Where the default :class:`ConvergenceParams` come from."""

CONVERGENCE_RULES: dict[str, Rule] = {
    "depth_exponent": FINITE_POSITIVE,
    "skew_sensitivity": FINITE_NON_NEGATIVE,
    "reference_rounds": FINITE_POSITIVE,
    "target_loss_gap": Rule(
        "a number in (0, 1): the target eval loss gap as a fraction of an untrained model's",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < 1,
        (0.0, 1.0, 1.5, math.nan, "0.1"),
    ),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConvergenceParams:
    """Constants of the convergence model (``planner.convergence``); refit by feedback.

    Progress of group k per global round is ``w_k * (d_k / L) ** depth_exponent *
    tau_k / (1 + skew_sensitivity * skew_k * (tau_k - 1))``; rounds to target are
    ``target_rounds / sum_k progress_k``.

    The target. A run's eval loss falls from ``l_0 = ln C`` (C classes, nothing learnt) towards
    a floor ``l_inf`` (0 by default), closing the gap geometrically in progress (``planner.refit``
    (F2)). ``reference_rounds`` (R0) is the rounds flat full-depth FedAvg needs to bring the gap
    to ``REFERENCE_LOSS_GAP`` = 10% of ``l_0 - l_inf``; ``target_loss_gap`` sets the target this
    problem plans for, and rounds scale with it as ``R0 * ln(target_loss_gap) / ln(0.1)``.
    :func:`target_for_loss` turns a loss level in nats into that fraction.

    The defaults are calibrated, not guessed: :data:`CALIBRATION_SOURCE`. They were fitted at
    2 local steps of batch 8 per intra-group round; the model treats rounds as independent of
    the fleet size and of the samples a round processes (``planner.convergence`` says why).
    """

    depth_exponent: float = 0.108
    skew_sensitivity: float = 0.241
    reference_rounds: float = 58.3
    target_loss_gap: float = REFERENCE_LOSS_GAP

    def __post_init__(self) -> None:
        _raise_if(check_fields(self, CONVERGENCE_RULES))

    @property
    def target_rounds(self) -> float:
        """Rounds flat full-depth FedAvg needs to reach ``target_loss_gap``: ``R0 ln(gap) / ln(0.1)``."""
        if self.target_loss_gap == REFERENCE_LOSS_GAP:
            return self.reference_rounds  # exactly, not through two logarithms
        return self.reference_rounds * math.log(self.target_loss_gap) / math.log(REFERENCE_LOSS_GAP)

    def describe_target(self) -> str:
        """The target in words, e.g. ``"eval loss gap 10% of the untrained model's (R0 58.3 rounds)"``."""
        return (
            f"eval loss gap {self.target_loss_gap:.3g} of the untrained model's (ln C - floor); "
            f"flat FedAvg needs {self.target_rounds:.3g} rounds"
        )


def with_num_labels(cost: CostModel, num_labels: int) -> CostModel:
    """``cost`` with its head re-sized to ``num_labels`` classes.

    A classification head is a linear map from the hidden state to one score per class (with a
    bias or without), so its bytes are proportional to the class count: ``head_bytes * C' / C``,
    rounded. Compute times stay: the head's share of a step is a fraction of a per cent.

    Examples
    --------
    >>> cost = CostModel(model_name="m", num_layers=1, batch_size=1, seq_len=1, embedding_forward_s=0.0,
    ...     layer_forward_s=(1.0,), layer_backward_s=(1.0,), head_step_s=0.0, layer_optimizer_s=0.0,
    ...     adapter_bytes_per_layer=1, head_bytes=40040, activation_bytes_per_sample_per_layer=1,
    ...     optimizer_bytes_per_layer=0, base_model_bytes=1, num_labels=26)
    >>> with_num_labels(cost, 4).head_bytes  # 4 (384 x 4 + 4): MiniLM's head for four classes
    6160

    Raises
    ------
    InvalidInputError
        If ``cost.num_labels`` is unknown (``None``) or ``num_labels`` is not an integer >= 1.
    """
    issues = []
    if cost.num_labels is None:
        issues.append(Issue("cost_model.num_labels", "the class count of the measured head (profile again)", None))
    if not (is_int(num_labels) and num_labels >= 1):
        issues.append(Issue("num_labels", "an integer >= 1", num_labels))
    _raise_if(issues)
    head = round(cost.head_bytes * num_labels / cost.num_labels)  # type: ignore[operator]
    return dataclasses.replace(cost, head_bytes=head, num_labels=num_labels)


def target_for_loss(loss_nats: float, num_classes: int, *, loss_floor_nats: float = 0.0) -> float:
    """The ``target_loss_gap`` of an eval-loss target: ``(loss - floor) / (ln C - floor)``.

    Examples
    --------
    >>> round(target_for_loss(0.1 * math.log(26), 26), 6)
    0.1

    Raises
    ------
    InvalidInputError
        If the loss is not strictly between the floor and ``ln(num_classes)``.
    """
    issues = []
    if not (is_int(num_classes) and num_classes >= 2):
        issues.append(Issue("num_classes", "an integer >= 2", num_classes))
    elif not (
        isinstance(loss_nats, int | float)
        and math.isfinite(loss_nats)
        and loss_floor_nats < loss_nats < math.log(num_classes)
    ):
        issues.append(
            Issue(
                "target_loss_nats",
                f"a loss between the floor {loss_floor_nats:g} and "
                f"ln({num_classes}) = {math.log(num_classes):.4g} nats",
                loss_nats,
            )
        )
    _raise_if(issues)
    return (loss_nats - loss_floor_nats) / (math.log(num_classes) - loss_floor_nats)


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
        _raise_if(issues)

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
