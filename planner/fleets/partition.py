"""Split the training rows among devices: IID, Dirichlet(alpha) over labels, or k classes per device.

The partitions come from Flower Datasets' partitioners (``flwr_datasets.partitioner``, v0.6.1),
which work on a Hugging Face ``datasets.Dataset``; we build one with two columns, ``label`` and
``row`` (the row's position in the full data set), and read each partition's ``row`` column back.
Neither package imports torch; both are imported only when a partition is made, so importing the
planner stays light.

- ``iid``: ``IidPartitioner`` shards the rows contiguously, so the rows are first put in a seeded
  random order; every device gets ``n // N`` or ``n // N + 1`` rows.
- ``dirichlet``: ``DirichletPartitioner`` divides each class among the devices in proportions drawn
  from Dirichlet(alpha) (Yurochkin et al. 2019), redrawing while a device holds fewer than
  ``min_samples_per_device`` rows; small alpha gives very skewed devices. Flower redraws at most 10
  times; when all 10 fail we start it again with the next seed from the same seeded stream, at most
  ``DIRICHLET_RESTARTS`` times (so a draw is still a Dirichlet draw conditioned on every device
  holding its minimum, and a seed still fixes it). Few classes over many devices at small alpha need
  this: Jane Austen's 6 classes over 80 devices at alpha 0.1 leave some device empty in most draws.
- ``classes``: ``PathologicalPartitioner`` gives every device exactly ``classes_per_device`` classes
  (Li et al. 2022), the first one deterministically (device ``i`` gets class ``i mod C``, so every
  class is used once there are at least ``C`` devices, as in that paper), the rest at random.

The result is a tuple per device of sorted row positions into the *full* data set: a subset of
``train_indices``, disjoint across devices, never a held-out row. A seed fixes it. With
``max_samples_per_device`` each larger device keeps a seeded uniform sample of that many rows.

Examples
--------
>>> labels = (0, 1, 0, 1, 0, 1, 0, 1, 2, 2)
>>> parts = partition_indices(labels, range(8), PartitionSpec(method="iid", num_devices=2), seed=0)
>>> [len(p) for p in parts], sorted(parts[0] + parts[1]) == list(range(8))
([4, 4], True)
>>> PartitionSpec(method="dirichlet", num_devices=20, alpha=0.1).description
'dirichlet(alpha=0.1)'
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.rules import FINITE_POSITIVE, POSITIVE_INT, Rule, check_fields, optional

__all__ = ["DIRICHLET_RESTARTS", "PARTITION_RULES", "PartitionMethod", "PartitionSpec", "partition_indices"]

log = logging.getLogger(__name__)

PartitionMethod = Literal["iid", "dirichlet", "classes"]

DIRICHLET_RESTARTS = 50
"""How many times a Dirichlet partition restarts Flower's partitioner (10 draws each) with a new seed."""

PARTITION_RULES: dict[str, Rule] = {
    "method": Rule(
        "one of 'iid', 'dirichlet', 'classes'", lambda v: v in ("iid", "dirichlet", "classes"), ("shards", None)
    ),
    "num_devices": POSITIVE_INT,
    "alpha": FINITE_POSITIVE,
    "classes_per_device": POSITIVE_INT,
    "min_samples_per_device": POSITIVE_INT,
    "max_samples_per_device": optional(POSITIVE_INT),
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PartitionSpec:
    """How to split the training rows among ``num_devices`` devices.

    Parameters
    ----------
    method : {"iid", "dirichlet", "classes"}
    num_devices : int
    alpha : float
        Dirichlet concentration (``dirichlet`` only); smaller is more skewed.
    classes_per_device : int
        Classes on each device (``classes`` only).
    min_samples_per_device : int
        Fewest rows a device may end with (the Dirichlet draw is repeated until it holds).
    max_samples_per_device : int or None
        Keep at most this many rows per device (a seeded uniform sample); ``None`` keeps all.
    """

    method: PartitionMethod
    num_devices: int
    alpha: float = 0.5
    classes_per_device: int = 2
    min_samples_per_device: int = 1
    max_samples_per_device: int | None = None

    def __post_init__(self) -> None:
        issues = check_fields(self, PARTITION_RULES)
        low, high = self.min_samples_per_device, self.max_samples_per_device
        if not issues and high is not None and high < low:  # only once both fields pass their own rules
            issues.append(Issue("max_samples_per_device", f"at least min_samples_per_device ({low})", high))
        if issues:
            raise InvalidInputError(issues)

    @property
    def description(self) -> str:
        """A short label for the fleet file: ``iid``, ``dirichlet(alpha=0.5)``, ``classes(k=2)``."""
        text = {
            "iid": "iid",
            "dirichlet": f"dirichlet(alpha={self.alpha:g})",
            "classes": f"classes(k={self.classes_per_device})",
        }[self.method]
        if self.max_samples_per_device is not None:
            text += f", max {self.max_samples_per_device} samples per device"
        return text


def _checked_inputs(
    labels: Sequence[int] | np.ndarray, train_indices: Iterable[int] | np.ndarray, spec: PartitionSpec, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and training rows as int64 arrays, after checking both and the seed (all issues at once)."""
    label_array = np.asarray(labels)
    train = np.asarray(list(train_indices) if not isinstance(train_indices, np.ndarray) else train_indices)
    issues = []
    if label_array.ndim != 1 or not np.issubdtype(label_array.dtype, np.integer) or (label_array < 0).any():
        issues.append(Issue("labels", "a list of class positions (integers >= 0)", f"dtype {label_array.dtype}"))
    if train.ndim != 1 or (train.size and not np.issubdtype(train.dtype, np.integer)):
        issues.append(Issue("train_indices", "a list of row positions (integers)", f"dtype {train.dtype}"))
    elif train.size and (train.min() < 0 or train.max() >= label_array.size):
        issues.append(
            Issue("train_indices", f"row positions in [0, {label_array.size})", f"{train.min()}..{train.max()}")
        )
    elif np.unique(train).size != train.size:
        issues.append(
            Issue("train_indices", "distinct row positions", f"{train.size - np.unique(train).size} repeated")
        )
    elif train.size < spec.num_devices * spec.min_samples_per_device:
        need = (
            f"at least num_devices x min_samples_per_device = {spec.num_devices} x {spec.min_samples_per_device} rows"
        )
        issues.append(Issue("train_indices", need, f"{train.size} rows", "use fewer devices or more data"))
    if isinstance(seed, bool) or not (isinstance(seed, int | np.integer) and seed >= 0):
        issues.append(Issue("seed", "an integer >= 0", seed))
    if issues:
        raise InvalidInputError(issues)
    return label_array.astype(np.int64), train.astype(np.int64)


def _partitioner(spec: PartitionSpec, seed: int):  # type: ignore[no-untyped-def]
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if spec.method == "iid":
        return IidPartitioner(num_partitions=spec.num_devices)
    if spec.method == "dirichlet":
        return DirichletPartitioner(
            num_partitions=spec.num_devices,
            partition_by="label",
            alpha=float(spec.alpha),
            min_partition_size=spec.min_samples_per_device,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    return PathologicalPartitioner(
        num_partitions=spec.num_devices,
        partition_by="label",
        num_classes_per_partition=spec.classes_per_device,
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=seed,
    )


def _what(spec: PartitionSpec) -> str:
    name = {"iid": "IidPartitioner", "dirichlet": "DirichletPartitioner", "classes": "PathologicalPartitioner"}
    return f"{name[spec.method]} ({spec.description}, {spec.num_devices} devices)"


def partition_indices(
    labels: Sequence[int] | np.ndarray,
    train_indices: Iterable[int] | np.ndarray,
    spec: PartitionSpec,
    *,
    seed: int,
) -> tuple[tuple[int, ...], ...]:
    """Split ``train_indices`` among ``spec.num_devices`` devices.

    Parameters
    ----------
    labels : sequence of int
        Class position of every row of the full data set.
    train_indices : iterable of int
        The rows devices may hold (the held-out rows are not in it).
    spec : PartitionSpec
    seed : int
        Seed of the row order, the partitioner and the subsample (>= 0).

    Returns
    -------
    tuple of tuple of int
        Per device, its sorted row positions into the full data set.

    Raises
    ------
    InvalidInputError
        If the inputs are malformed, there are fewer training rows than ``num_devices x
        min_samples_per_device``, ``classes_per_device`` exceeds the classes present or a class has
        fewer rows than the devices that need it, or the Dirichlet draw leaves a device under
        ``min_samples_per_device`` rows in every one of Flower's 10 redraws on each of
        ``1 + DIRICHLET_RESTARTS`` seeds (the message names the partitioner, alpha and the number
        of devices).
    """
    label_array, train = _checked_inputs(labels, train_indices, spec, seed)
    present = np.unique(label_array[train]).size
    if spec.method == "classes" and spec.classes_per_device > present:
        expected = f"at most the classes among the training rows ({present})"
        raise InvalidInputError([Issue("classes_per_device", expected, spec.classes_per_device)])
    from datasets import Dataset

    rng = np.random.default_rng(int(seed))
    order = train[rng.permutation(train.size)]  # IidPartitioner shards contiguously; others split classes in order
    dataset = Dataset.from_dict({"label": label_array[order], "row": order})
    starts = 1 + (DIRICHLET_RESTARTS if spec.method == "dirichlet" else 0)
    for start in range(starts):
        partitioner = _partitioner(spec, int(rng.integers(2**31 - 1)))
        partitioner.dataset = dataset
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                parts = [
                    partitioner.load_partition(i).with_format("arrow")["row"].to_numpy()
                    for i in range(spec.num_devices)
                ]
            break
        except ValueError as exc:  # Flower's words, first sentence: "The max number of attempts (10) was reached"
            failure = str(exc).split(". ")[0]
            if start + 1 < starts:
                continue
            expected = f"a partition {_what(spec)} can make with at least {spec.min_samples_per_device} rows per device"
            if starts > 1:
                failure = f"{failure}, in each of {starts} starts with a new seed"
            hint = {
                "dirichlet": "raise alpha, or lower num_devices or min_samples_per_device",
                "classes": "lower classes_per_device or num_devices",
                "iid": "lower num_devices",
            }[spec.method]
            raise InvalidInputError([Issue("partition", expected, failure, hint)]) from None
    if start:
        log.info("%s: every device got its minimum on start %d (a new seed each)", _what(spec), start + 1)
    for warning in caught:  # Flower's retries and unused classes: worth a log line, not a user warning
        log.info("%s: %s", _what(spec), warning.message)
    small = [i for i, part in enumerate(parts) if part.size < spec.min_samples_per_device]
    if small:  # IidPartitioner and PathologicalPartitioner take no minimum: check it here
        got = f"{len(small)} devices below it, e.g. device {small[0]} with {parts[small[0]].size}"
        expected = f"at least {spec.min_samples_per_device} rows on every device from {_what(spec)}"
        raise InvalidInputError([Issue("partition", expected, got, "use fewer devices")])
    cap = spec.max_samples_per_device
    if cap is not None:
        parts = [rng.choice(part, cap, replace=False) if part.size > cap else part for part in parts]
    log.info(
        "%s: %d rows, %d..%d per device",
        _what(spec),
        sum(p.size for p in parts),
        min(p.size for p in parts),
        max(p.size for p in parts),
    )
    return tuple(tuple(np.sort(part).tolist()) for part in parts)
