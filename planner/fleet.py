"""Fleets: make one from a data set, save and load it (checked).

:func:`make_fleet` holds out a stratified test split, partitions the training rows among devices
(:mod:`planner.fleets.partition`) and gives each device a tier's speed, memory and links
(:mod:`planner.fleets.tiers`). Three seeds, derived from ``seed`` by ``numpy.random.SeedSequence``, drive
the split, the partition and the device draws, so one seed fixes the whole fleet.

:func:`load_fleet` reports every problem of a fleet file at once, with the file's name and a path
(``fleet.json: devices[3].uplink_mbps must be a finite number > 0; got 0.0``), then the cross-checks
of :func:`check_fleet` (unique ids, class counts, sample indices consistent with both).

Importing FedScale device traces (:func:`import_fedscale`) lives in :mod:`hierfedlora.planner.fleets.fedscale` and is
importable from here.

Examples
--------
>>> from hierfedlora.planner.fleets.datasets import LabelledTexts
>>> from hierfedlora.planner.types import DatasetSpec
>>> data = LabelledTexts(texts=("t",) * 12, labels=(0, 1, 2) * 4, class_names=("a", "b", "c"),
...                      spec=DatasetSpec(kind="csv", path="toy.csv", num_samples=12))
>>> fleet = make_fleet(data, num_devices=3, partition="iid", tier_mix="phones", test_fraction=0.25, seed=1)
>>> [d.device_id for d in fleet.devices], fleet.partition, len(fleet.dataset.test_indices)
(['d0', 'd1', 'd2'], 'iid', 3)
>>> check_fleet(fleet)
[]
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.datasets import LabelledTexts, train_test_split
from hierfedlora.planner.fleets.fedscale import FEDSCALE_KBIT, import_fedscale
from hierfedlora.planner.fleets.fleet_store import FLEET_NPZ_SUFFIX, read_fleet_npz, write_fleet_npz
from hierfedlora.planner.fleets.partition import PartitionMethod, PartitionSpec, partition_indices
from hierfedlora.planner.fleets.tiers import NETWORKS, TIERS, assign_tiers, draw_device, resolve_tier_mix
from hierfedlora.planner.io import read_json, write_json
from hierfedlora.planner.rules import is_int
from hierfedlora.planner.types import DeviceProfile, Fleet

__all__ = ["FEDSCALE_KBIT", "check_fleet", "import_fedscale", "load_fleet", "make_fleet", "save_fleet"]

log = logging.getLogger(__name__)


def _collect(issues: list[Issue], build):  # type: ignore[no-untyped-def]
    """Run ``build``; on InvalidInputError keep its issues and return None (so all are reported at once)."""
    try:
        return build()
    except InvalidInputError as err:
        issues.extend(err.issues)
        return None


def make_fleet(
    data: LabelledTexts,
    *,
    num_devices: int,
    partition: PartitionMethod = "dirichlet",
    alpha: float = 0.5,
    classes_per_device: int = 2,
    tier_mix: str | Mapping[str, float] = "paper",
    network: str | None = None,
    test_fraction: float = 0.1,
    max_samples_per_device: int | None = None,
    min_samples_per_device: int = 1,
    seed: int = 0,
) -> Fleet:
    """Partition ``data`` over ``num_devices`` simulated devices drawn from device tiers.

    Parameters
    ----------
    data : LabelledTexts
    num_devices : int
        Devices, named ``d0`` .. ``d{N-1}``.
    partition : {"iid", "dirichlet", "classes"}
        How training rows are split (see :mod:`planner.fleets.partition`).
    alpha : float
        Dirichlet concentration (``dirichlet``).
    classes_per_device : int
        Classes per device (``classes``).
    tier_mix : str or mapping of str to float
        A preset (``"paper"``, ``"phones"``, ``"mixed"``) or tier name -> weight.
    network : {"4g", "5g", "wifi"} or None
        Put every device on this link class instead of its tier's.
    test_fraction : float
        Share of rows held out for evaluation (stratified), in [0, 1).
    max_samples_per_device, min_samples_per_device : int
        Subsample larger devices to ``max``; refuse partitions leaving a device under ``min``.
    seed : int
        Fixes the split, the partition and the device draws.

    Raises
    ------
    InvalidInputError
        Every bad argument at once; then any partition that cannot be made (see
        :func:`partition_indices`).
    """
    issues: list[Issue] = []
    partition_args = {"method": partition, "num_devices": num_devices, "alpha": alpha}
    partition_args |= {"classes_per_device": classes_per_device, "min_samples_per_device": min_samples_per_device}
    spec = _collect(issues, lambda: PartitionSpec(**partition_args, max_samples_per_device=max_samples_per_device))
    _collect(issues, lambda: resolve_tier_mix(tier_mix))
    _collect(issues, lambda: train_test_split((0,), test_fraction, seed))  # checks the fraction and seed
    if network is not None and network not in NETWORKS:
        known = ", ".join(map(repr, NETWORKS))
        issues.append(Issue("network", f"one of {known}, or None (each tier's own link)", network))
    if issues:
        raise InvalidInputError(issues)
    split_seed, partition_seed, device_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
    train, test = train_test_split(data.labels, test_fraction, split_seed)
    parts = partition_indices(data.labels, train, spec, seed=partition_seed)
    labels = np.asarray(data.labels, dtype=np.int64)
    rng = np.random.default_rng(device_seed)
    devices = []
    for idx, (tier, part) in enumerate(zip(assign_tiers(num_devices, tier_mix, rng), parts, strict=True)):
        draw = draw_device(TIERS[tier], rng, network=network)
        counts = np.bincount(labels[list(part)], minlength=data.num_classes)
        label_counts = tuple(counts.tolist())
        devices.append(DeviceProfile(device_id=f"d{idx}", label_counts=label_counts, tier=tier, **draw._asdict()))
    fleet = Fleet(
        devices=tuple(devices),
        class_names=data.class_names,
        dataset=dataclasses.replace(data.spec, test_indices=test),
        sample_indices=parts,
        partition=spec.description,
        seed=seed,
    )
    samples = sum(d.num_samples for d in devices)
    log.info(
        "fleet: %d devices, %d samples, %d held out, %s, tiers %s",
        num_devices,
        samples,
        len(test),
        spec.description,
        tier_mix,
    )
    return fleet


def check_fleet(fleet: Fleet) -> list[Issue]:
    """Issues no single field can see: unique device ids, one count per class on every device, and
    sample indices that match the label counts, stay inside the data set, off the held-out rows and
    on one device each."""
    issues = []
    first: dict[str, int] = {}
    num_classes = len(fleet.class_names)
    for idx, device in enumerate(fleet.devices):
        if device.device_id in first:
            expected = (
                f"a device id unique in the fleet ({device.device_id!r} is also devices[{first[device.device_id]}])"
            )
            issues.append(Issue(f"devices[{idx}].device_id", expected, device.device_id))
        first.setdefault(device.device_id, idx)
        if len(device.label_counts) != num_classes:
            expected = f"one count per class ({num_classes} class_names)"
            issues.append(Issue(f"devices[{idx}].label_counts", expected, f"{len(device.label_counts)} counts"))
    return issues + _index_issues(fleet)


def _index_issues(fleet: Fleet) -> list[Issue]:
    size = fleet.dataset.num_samples if fleet.dataset is not None else None
    held_out = set(fleet.dataset.test_indices) if fleet.dataset is not None else set()
    issues = []
    if held_out and (max(held_out) >= size or len(held_out) != len(fleet.dataset.test_indices)):
        issues.append(Issue("dataset.test_indices", f"distinct rows in [0, {size})", f"{len(held_out)} distinct rows"))
    owner: dict[int, int] = {}
    for idx, indices in enumerate(fleet.sample_indices):
        path = f"sample_indices[{idx}]"
        if not isinstance(indices, tuple | list):
            issues.append(Issue(path, "a list of row positions", indices))
            continue
        bad = [i for i in indices if not (is_int(i) and i >= 0 and (size is None or i < size))]
        if bad:
            bound = f" < dataset.num_samples ({size})" if size is not None else ""
            issues.append(Issue(path, f"row positions: integers >= 0{bound}", bad[0]))
            continue
        if len(set(indices)) != len(indices):
            issues.append(Issue(path, "distinct row positions", f"{len(indices) - len(set(indices))} repeated"))
        if idx < len(fleet.devices) and len(indices) != fleet.devices[idx].num_samples:
            expected = f"one row per sample of devices[{idx}] (sum of label_counts = {fleet.devices[idx].num_samples})"
            issues.append(Issue(path, expected, f"{len(indices)} rows"))
        leaked = held_out.intersection(indices)
        if leaked:
            issues.append(Issue(path, "no held-out row (dataset.test_indices)", f"{len(leaked)}, e.g. {min(leaked)}"))
        shared = [i for i in indices if owner.setdefault(i, idx) != idx]
        if shared:
            expected = f"rows on this device only (row {shared[0]} is on sample_indices[{owner[shared[0]]}])"
            issues.append(Issue(path, expected, f"{len(shared)} shared"))
    return issues


def load_fleet(path: str | os.PathLike[str]) -> Fleet:
    """Read and check a fleet file: JSON, or the columnar format of :mod:`planner.fleets.fleet_store` for a
    ``.npz`` name (large fleets).

    Raises
    ------
    InvalidInputError
        Every problem at once, each naming the file and the path into it: malformed JSON, missing
        or unknown keys (with a "did you mean"), broken field rules, then the cross-checks of
        :func:`check_fleet`.
    """
    fleet = read_fleet_npz(path) if Path(path).suffix == FLEET_NPZ_SUFFIX else read_json(Fleet, path)
    issues = check_fleet(fleet)
    if issues:
        raise InvalidInputError(issues, Path(path).name)
    return fleet


def save_fleet(path: str | os.PathLike[str], fleet: Fleet) -> None:
    """Write ``fleet`` atomically (temporary file, fsync, rename), after :func:`check_fleet`: as JSON, or
    columnar (:mod:`planner.fleets.fleet_store`) when ``path`` ends in ``.npz``.

    Raises
    ------
    InvalidInputError
        If the fleet fails :func:`check_fleet` (nothing is written).
    """
    issues = check_fleet(fleet)
    if issues:
        raise InvalidInputError(issues)
    if Path(path).suffix == FLEET_NPZ_SUFFIX:
        write_fleet_npz(path, fleet)
    else:
        write_json(path, fleet)
