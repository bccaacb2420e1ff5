"""Fleet contract types: one device (:class:`DeviceProfile`), the data set a fleet's samples come from
(:class:`DatasetSpec`) and the fleet itself (:class:`Fleet`), with their field rules.

Rules that span several devices (equal class counts, unique ids) live in :mod:`hierfedlora.planner.checks`;
reading and writing fleet files in :mod:`hierfedlora.planner.fleet`.

Examples
--------
>>> d = DeviceProfile(device_id="d0", label_counts=(3, 1), compute_scale=2.0,
...                   memory_bytes=2**30, uplink_mbps=10.0, downlink_mbps=50.0)
>>> Fleet(devices=(d,), class_names=("a", "b")).devices[0].num_samples
4
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from hierfedlora.planner.errors import Issue, raise_if_any
from hierfedlora.planner.rules import (
    ANY_STRING,
    FINITE_POSITIVE,
    MAX_BYTES,
    MAX_COUNT,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Rule,
    all_ints_at_least,
    check_fields,
    check_limits,
    int_tuple,
    optional,
)
from hierfedlora.planner.schema import SCHEMA_RULE, SCHEMA_VERSION

__all__ = ["DATASET_RULES", "DEVICE_LIMITS", "DEVICE_RULES", "FLEET_RULES", "DatasetSpec", "DeviceProfile", "Fleet"]


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
        raise_if_any(issues + check_limits(self, DEVICE_LIMITS, DEVICE_RULES, broken=broken))

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
        raise_if_any(check_fields(self, DATASET_RULES))


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
        raise_if_any(issues)
