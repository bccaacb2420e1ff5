"""Fleets: make one from a data set, save and load it (checked), import FedScale device traces.

:func:`make_fleet` holds out a stratified test split, partitions the training rows among devices
(:mod:`planner.fleets.partition`) and gives each device a tier's speed, memory and links
(:mod:`planner.fleets.tiers`). Three seeds, derived from ``seed`` by ``numpy.random.SeedSequence``, drive
the split, the partition and the device draws, so one seed fixes the whole fleet.

:func:`load_fleet` reports every problem of a fleet file at once, with the file's name and a path
(``fleet.json: devices[3].uplink_mbps must be a finite number > 0; got 0.0``), then the cross-checks
of :func:`check_fleet` (unique ids, class counts, sample indices consistent with both).

FedScale traces (Lai et al., FedScale, ICML 2022; ``benchmark/dataset/data/device_info/README.md``
in SymbioticLab/FedScale). ``client_device_capacity`` maps a client id to
``{"computation": ms per sample, "communication": kbit/s}``: ``computation`` is a model's inference
latency per sample and FedScale charges training ``augmentation_factor = 3.0`` times it
(``ClientMetadata.get_completion_time`` in ``fedscale/cloud/internal/client_metadata.py``);
``communication`` is the link rate in kbit/s, where FedScale's kbit is 1024 bits (update sizes are
``bytes / 1024 * 8`` "kbits" in its aggregator), so Mbps = kbit/s x 1024 / 10**6, used for both
directions. ``client_behave_trace`` maps a client id to ``{"active": [s], "inactive": [s],
"finish_time": s, "duration": s, "model": str}``; a client is online from ``active[i]`` to
``inactive[i]``, the pattern repeating every ``finish_time`` seconds (``ClientMetadata.is_active``).
FedScale ships both as pickles; we never unpickle a file (unpickling runs code), so the same content
must come as JSON (client id -> entry) or CSV (``client_id,computation,communication``; and
``client_id,active,inactive[,finish_time]``, a row per window). Convert a pickle you trust yourself:
``json.dump({str(k): v for k, v in pickle.load(open(name, "rb")).items()}, open(name + ".json", "w"))``.

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
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.datasets import LabelledTexts, raise_capped, train_test_split
from hierfedlora.planner.fleets.fleet_store import FLEET_NPZ_SUFFIX, read_fleet_npz, write_fleet_npz
from hierfedlora.planner.fleets.partition import PartitionMethod, PartitionSpec, partition_indices
from hierfedlora.planner.fleets.text_files import csv_row_shape_issues, csv_rows, read_text
from hierfedlora.planner.fleets.tiers import NETWORKS, TIERS, assign_tiers, draw_device, resolve_tier_mix
from hierfedlora.planner.io import parse_json, read_json, write_json
from hierfedlora.planner.rules import FINITE_POSITIVE, is_int
from hierfedlora.planner.types import DeviceProfile, Fleet

__all__ = ["FEDSCALE_KBIT", "check_fleet", "import_fedscale", "load_fleet", "make_fleet", "save_fleet"]

log = logging.getLogger(__name__)

FEDSCALE_KBIT = 1024
"""Bits in one FedScale "kbit" (its update sizes are ``bytes / 1024 * 8``)."""


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


def _trace_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[str, str, dict[str, object]]]:
    """(client id, issue path prefix, entry) per record of a JSON object or a CSV file; lists merge per id."""
    text, _ = read_text(path, hint="a trace file (JSON or CSV)")
    if path.suffix.lower() == ".csv":
        header, records, issues = csv_rows(text, path.name)
        missing = [c for c in ("client_id", *columns) if c not in header]
        if missing:
            expected = f"a header with columns client_id, {', '.join(columns)}"
            raise InvalidInputError([Issue("line 1", expected, header)], path.name)
        rows, found = [], []
        for line, row in records:
            bad = csv_row_shape_issues(row, header, line)
            found += bad
            if not bad:
                rows.append((str(row["client_id"]), f"line {line}", dict(row)))
        raise_capped(found + issues, path.name)
        return rows
    data = parse_json(text, source=path.name)
    if not isinstance(data, dict) or not data:
        raise InvalidInputError(
            [Issue("(top level)", "a non-empty object: client id -> entry", type(data).__name__)], path.name
        )
    return [(str(key), f'["{key}"]', value if isinstance(value, dict) else {"": value}) for key, value in data.items()]


def _number(value: object) -> float | None:
    """A finite float from a JSON number or a CSV field; None for anything else (bools included)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and not isinstance(value, bool) else None


def _read_capacity(path: Path) -> dict[str, tuple[float, float]]:
    issues, capacity, units = [], {}, {"computation": "ms per sample", "communication": "kbit/s"}
    for client_id, where, entry in _trace_rows(path, tuple(units)):
        values = {field: _number(entry.get(field)) for field in units}
        bad = [field for field, value in values.items() if not FINITE_POSITIVE.accepts(value)]
        issues += [
            Issue(f"{where}.{f}", f"{FINITE_POSITIVE.expected} ({units[f]})", entry.get(f, "missing")) for f in bad
        ]
        if not bad:
            capacity[client_id] = (values["computation"], values["communication"])
    raise_capped(issues, path.name)
    return capacity  # type: ignore[return-value]


def _read_behaviour(path: Path) -> dict[str, tuple[list[tuple[float, float]], float]]:
    issues: list[Issue] = []
    windows: dict[str, tuple[list[tuple[float, float]], float]] = {}
    for client_id, where, entry in _trace_rows(path, ("active", "inactive")):
        active, inactive = ([v] if not isinstance(v, list) else v for v in (entry.get("active"), entry.get("inactive")))
        bounds = [(_number(a), _number(b)) for a, b in zip(active, inactive, strict=False)]
        if len(active) != len(inactive) or not all(b is not None and a is not None and 0 <= a for a, b in bounds):
            expected = "times in seconds (finite numbers >= 0), one inactive time per active time"
            issues.append(Issue(f"{where}.active", expected, f"active {active[:3]}, inactive {inactive[:3]}"))
            continue
        known, period = windows.get(client_id, ([], 0.0))
        known += [(a, b) for a, b in bounds if a is not None and b is not None and b > a]  # b == a: never online
        windows[client_id] = (known, max(period, _number(entry.get("finish_time", 0)) or 0.0))
    raise_capped(issues, path.name)
    return windows


def _tile(
    windows: list[tuple[float, float]], period_s: float, until_s: float | None
) -> tuple[tuple[float, float], ...]:
    """The windows, repeated every ``period_s`` up to ``until_s`` (FedScale's traces loop)."""
    if until_s is None or period_s <= 0:
        return tuple(sorted(windows))
    return tuple(
        sorted(
            (a + k * period_s, b + k * period_s)
            for k in range(int(until_s // period_s) + 1)
            for a, b in windows
            if a + k * period_s < until_s
        )
    )


def import_fedscale(
    capacity_path: str | os.PathLike[str],
    fleet: Fleet,
    *,
    host_train_s_per_sample: float,
    behaviour_path: str | os.PathLike[str] | None = None,
    training_factor: float = 3.0,
    repeat_until_s: float | None = None,
    seed: int = 0,
) -> Fleet:
    """Give ``fleet``'s devices the speeds, links and availability of FedScale trace clients.

    Label counts, sample indices and memory stay ``fleet``'s (the traces hold none). Device ``i``
    gets the ``i``-th of ``len(fleet.devices)`` clients drawn without replacement by
    ``default_rng(seed)`` from the trace's ids (those in both traces when ``behaviour_path`` is given).

    Parameters
    ----------
    capacity_path : path
        ``client_device_capacity`` content as JSON or CSV (see the module docstring).
    fleet : Fleet
        The source of label counts (e.g. from :func:`make_fleet`).
    host_train_s_per_sample : float
        Training seconds per sample on the host that measured the cost model (a step's seconds
        divided by its batch size); ``compute_scale = training_factor * ms / 1000 / this``.
    behaviour_path : path or None
        ``client_behave_trace`` content as JSON or CSV; ``None`` leaves devices always online.
    training_factor : float
        Training cost per sample over the trace's inference latency (FedScale's 3.0).
    repeat_until_s : float or None
        Repeat each client's windows every ``finish_time`` seconds up to this time; ``None`` keeps
        one period.
    seed : int

    Raises
    ------
    InvalidInputError
        If a trace is unreadable or malformed (every bad entry, with its client id or line), a
        parameter is not a finite number > 0, or the traces hold fewer clients than the fleet has devices.
    """
    issues = [
        Issue(name, FINITE_POSITIVE.expected, value)
        for name, value in (("host_train_s_per_sample", host_train_s_per_sample), ("training_factor", training_factor))
        if not FINITE_POSITIVE.accepts(value)
    ]
    if repeat_until_s is not None and not FINITE_POSITIVE.accepts(repeat_until_s):
        issues.append(Issue("repeat_until_s", f"{FINITE_POSITIVE.expected}, or None", repeat_until_s))
    if not (is_int(seed) and seed >= 0):
        issues.append(Issue("seed", "an integer >= 0", seed))
    if issues:
        raise InvalidInputError(issues)
    capacity = _read_capacity(Path(capacity_path))
    behaviour = _read_behaviour(Path(behaviour_path)) if behaviour_path is not None else None
    ids = sorted(
        capacity if behaviour is None else set(capacity) & set(behaviour),
        key=lambda k: (0, int(k), k) if k.isdigit() else (1, 0, k),
    )
    if len(ids) < len(fleet.devices):
        raise InvalidInputError(
            [Issue("clients", f"at least one trace client per device ({len(fleet.devices)})", f"{len(ids)} clients")],
            Path(capacity_path).name,
        )
    chosen = [ids[i] for i in np.random.default_rng(seed).choice(len(ids), len(fleet.devices), replace=False)]
    devices = []
    for device, client_id in zip(fleet.devices, chosen, strict=True):
        ms_per_sample, kbit_s = capacity[client_id]
        mbps = kbit_s * FEDSCALE_KBIT / 1e6
        availability = None if behaviour is None else _tile(*behaviour[client_id], repeat_until_s)
        scale = training_factor * ms_per_sample / 1000.0 / host_train_s_per_sample
        tier = f"fedscale:{client_id}"
        link = {"uplink_mbps": mbps, "downlink_mbps": mbps}
        devices.append(dataclasses.replace(device, compute_scale=scale, tier=tier, availability=availability, **link))
    log.info("imported %d FedScale clients (of %d) into the fleet", len(devices), len(ids))
    return dataclasses.replace(fleet, devices=tuple(devices))
