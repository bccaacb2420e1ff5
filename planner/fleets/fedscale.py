"""Import FedScale device traces into a fleet: :func:`import_fedscale` gives its devices the speeds, links and
availability of trace clients.

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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.datasets import raise_capped
from hierfedlora.planner.fleets.text_files import csv_row_shape_issues, csv_rows, read_text
from hierfedlora.planner.io import parse_json
from hierfedlora.planner.rules import FINITE_POSITIVE, is_int
from hierfedlora.planner.types import Fleet

__all__ = ["FEDSCALE_KBIT", "import_fedscale"]

log = logging.getLogger("hierfedlora.planner.fleet")  # the import's log line: its logger, as before the move

FEDSCALE_KBIT = 1024
"""Bits in one FedScale "kbit" (its update sizes are ``bytes / 1024 * 8``)."""


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
