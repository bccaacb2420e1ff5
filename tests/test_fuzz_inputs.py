"""Property-based fuzzing of every input reader: fleets (JSON and .npz), cost models, plans, presets, CSV
and JSONL data, fault files, convergence files, what-if studies (and the tier-mix files they name), and
the run folder a ``--resume`` reads (checkpoint.json, the tensor file, reports.jsonl).

Each case mutates a valid file (a value replaced by a hostile one: NaN, 1e308, a 10**30 count, null, a
list where a number belongs, nesting 5,000 deep, a byte order mark, a truncation, a deleted or unknown
key) and reads it the way the CLI does, then writes what it read. The properties:

- no exception escapes except the package's own (``HierFedLoraError``): never a traceback;
- no output file is left half-written: an output is absent or parses back whole, and no temporary
  file remains.

Binary inputs (.npz fleets, tensor files) get byte flips, truncations and cut-out spans as well; the
run folder also loses files or finds a folder in their place, and a repaired report log must hold
exactly the checkpoint's rounds. Hypothesis runs derandomized (a fixed seed, the same cases every run)
and without its example database: 130 cases for each of the first five readers, 40 to 80 for each of
the others (1,110 in all). ``scripts/fuzz_campaign.py`` runs the same strategies for thousands of cases,
out of CI.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierfedlora.commands.run import check_plan_inputs
from hierfedlora.planner.errors import HierFedLoraError
from hierfedlora.planner.fleet import load_fleet, make_fleet, save_fleet
from hierfedlora.planner.fleets.datasets import read_csv
from hierfedlora.planner.io import read_json, to_dict, write_json
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.types import CostModel
from hierfedlora.validation.experiment_presets import PRESETS, read_preset
from tests.factories import make_cost_model, make_two_group_plan

CASES_PER_READER = 130

FUZZ = settings(
    max_examples=CASES_PER_READER,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CSV_ROWS = ["text,label"] + [f"sample {i} of class {i % 3},c{i % 3}" for i in range(36)]

HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, -(10**30)]),
    st.sampled_from([0.0, -0.5, 1e-300, 1e308, float("nan"), float("inf"), -float("inf")]),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.just([]),
    st.just({}),
    st.just([[1]]),
    st.just([None]),
    st.just({"a": [1, {"b": None}]}),
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a JSON tree (the root included)."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for idx, value in enumerate(data[:6]):  # the first few elements of long lists are enough
            found += _paths(value, (*prefix, idx))
    return found


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return data


@st.composite
def mutated_json(draw: st.DrawFn, base: Any) -> str:
    """JSON text of ``base`` with one hostile change (or a damaged text)."""
    data = copy.deepcopy(base)
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "wrap", "deep", "text"]))
    path = draw(st.sampled_from(_paths(data)))
    if kind == "replace":
        data = _set(data, path, draw(HOSTILE))
    elif kind == "delete" and path:
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
    elif kind == "add":
        target = data
        for key in path:
            target = target[key]
        if isinstance(target, dict):
            target[draw(st.sampled_from(["memory", "extra", "device_ids", ""]))] = draw(HOSTILE)
        elif isinstance(target, list):
            target.append(draw(HOSTILE))
    elif kind == "wrap":
        data = _set(data, path, [copy.deepcopy(_get(data, path))])
    elif kind == "deep":
        data = _set(data, path, "__DEEP__")
    text = json.dumps(data, allow_nan=True)
    if kind == "deep":  # built as text: json.dumps itself would recurse too deep
        depth = draw(st.sampled_from([70, 5000]))
        text = text.replace('"__DEEP__"', "[" * depth + "]" * depth)
    if kind == "text":
        damage = draw(st.sampled_from(["bom", "truncate", "nan-literal", "huge-int", "bad-utf8-escape"]))
        cut = draw(st.integers(min_value=0, max_value=len(text)))
        text = {
            "bom": "\ufeff" + text,
            "truncate": text[:cut],
            "nan-literal": text[:cut] + "NaN" + text[cut:],
            "huge-int": text.replace("1", "9" * 5000, 1),
            "bad-utf8-escape": text[:cut] + '"\\ud800' + text[cut:],
        }[damage]
    return text


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _check(read: Callable[[Path], Any], text: str, write: Callable[[Any, Path], None] | None = None) -> None:
    """Read ``text`` from a file; only the package's errors may escape; what was read writes back whole."""
    with tempfile.TemporaryDirectory() as folder:
        source, out = Path(folder) / "input.json", Path(folder) / "out" / "output.json"
        source.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            value = read(source)
            if write is not None:
                write(value, out)
        except HierFedLoraError:
            pass
        leftovers = [p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers
        if out.exists():
            json.loads(out.read_text(encoding="utf-8"))  # whole: it parses


@pytest.fixture(scope="module")
def bases() -> dict[str, Any]:
    """A valid fleet (with its data set), cost model, plan and preset, as JSON data."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    (folder / "data.csv").write_text("\n".join(CSV_ROWS) + "\n")
    fleet = make_fleet(read_csv(folder / "data.csv"), num_devices=4, partition="iid", seed=0)
    cost = make_cost_model(2)
    plan = make_two_group_plan(fleet)  # its 4 devices in two halves
    return {"fleet": fleet, "cost": cost, "plan": plan, "folder": folder}


@FUZZ
@given(data=st.data())
def test_fuzzed_fleets_fail_cleanly(bases, data):
    """A mutated fleet loads or fails with a HierFedLoraError; a loaded one saves whole."""
    text = data.draw(mutated_json(to_dict(bases["fleet"])))
    _check(load_fleet, text, lambda fleet, out: save_fleet(out, fleet))


@FUZZ
@given(data=st.data())
def test_fuzzed_cost_models_fail_cleanly(bases, data):
    """A mutated cost model parses or fails with a HierFedLoraError; a parsed one is finite and writes whole."""
    text = data.draw(mutated_json(to_dict(bases["cost"])))
    _check(lambda path: read_json(CostModel, path), text, lambda cost, out: write_json(out, cost))


@FUZZ
@given(data=st.data())
def test_fuzzed_plans_fail_cleanly(bases, data):
    """A mutated plan parses, is checked against the fleet and cost model as `run` does, and writes whole."""
    text = data.draw(mutated_json(to_dict(bases["plan"])))

    def read(path: Path) -> Plan:
        plan = read_json(Plan, path)
        check_plan_inputs(plan, bases["fleet"], bases["cost"], "fleet.json", "cost.json", allow_cost_mismatch=True)
        return plan

    _check(read, text, lambda plan, out: write_json(out, plan))


@FUZZ
@given(data=st.data())
def test_fuzzed_presets_fail_cleanly(data):
    """A mutated preset parses or fails with a HierFedLoraError; a parsed one lists its settings and writes whole."""
    text = data.draw(mutated_json(to_dict(PRESETS["quick"])))

    def read(path: Path) -> Any:
        preset = read_preset(path)
        assert preset.settings()
        return preset

    _check(read, text, lambda preset, out: write_json(out, preset))


@st.composite
def mutated_csv(draw: st.DrawFn) -> str:
    rows = list(CSV_ROWS)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(rows) - 1))
        rows[at] = draw(
            st.one_of(
                st.just(rows[0]),  # the header again
                st.just(rows[at] + ",extra"),
                st.just(rows[at].split(",")[0]),
                st.just('"unterminated,c1'),
                st.just(""),
                st.just(",c1"),
                st.text(alphabet=',"\n\r ab\x00\ufeff', max_size=12),
                st.just("x" * 200_000 + ",c1"),  # past the csv module's field limit
            )
        )
    return "\n".join(rows) + draw(st.sampled_from(["\n", "", "\r\n"]))


@FUZZ
@given(text=mutated_csv())
def test_fuzzed_csv_data_fail_cleanly(bases, text):
    """A mutated CSV reads (and makes a fleet) or fails with a HierFedLoraError; a made fleet saves whole."""

    def read(path: Path) -> Any:
        return make_fleet(read_csv(path), num_devices=3, partition="iid", seed=0)

    _check(read, text, lambda fleet, out: save_fleet(out, fleet))


def test_the_hostile_values_reach_the_readers():
    """The mutation strategy produces the inputs the fuzz test exists for (it is not vacuous)."""
    # Arrange
    base = {"a": [1, 2], "b": {"c": 1.5}}
    seen: set[str] = set()

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(text=mutated_json(base))
    def collect(text: str) -> None:
        seen.update(word for word in ("NaN", "Infinity", "[[[[[[", "\ufeff", "null") if word in text)
        if text.count("[") > 1000:
            seen.add("deep")

    # Act
    collect()
    # Assert
    assert seen >= {"NaN", "Infinity", "[[[[[[", "\ufeff", "null", "deep"}


# ---- the readers added later: .npz fleets, fault files, convergence files, what-if studies, JSONL data, and
# ---- the run folder a --resume reads (checkpoint.json, the tensor file, reports.jsonl). Fewer cases each: the
# ---- whole file stays well under a minute.

MORE = settings(FUZZ, max_examples=60)


@st.composite
def damaged_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one byte-level fault: flipped bytes, a truncation, a cut-out span, or nothing left."""
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "cut", "empty", "append"]))
    at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
    if kind == "flip":
        flips = draw(st.lists(st.integers(min_value=0, max_value=max(len(data) - 1, 0)), min_size=1, max_size=4))
        out = bytearray(data)
        for idx in flips:
            out[idx] ^= draw(st.integers(min_value=1, max_value=255))
        return bytes(out)
    if kind == "truncate":
        return data[:at]
    if kind == "cut":
        return data[:at] + data[at + draw(st.integers(min_value=1, max_value=64)) :]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=16))
    return b""


@MORE
@given(data=st.data())
def test_fuzzed_npz_fleets_fail_cleanly(bases, data):
    """A damaged .npz fleet (bytes flipped or cut, its metadata JSON mutated, an array swapped for another
    type or shape) loads or fails with a HierFedLoraError; a loaded one saves whole."""
    import io

    import numpy as np

    from hierfedlora.planner.fleets.fleet_store import write_fleet_npz

    folder = Path(tempfile.mkdtemp(prefix="fuzz-npz-", dir=bases["folder"]))
    write_fleet_npz(folder / "fleet.npz", bases["fleet"])
    raw = (folder / "fleet.npz").read_bytes()
    if data.draw(st.booleans()):
        damaged = data.draw(damaged_bytes(raw))
    else:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        name = data.draw(st.sampled_from(sorted(arrays)))
        if name == "meta":
            arrays[name] = np.array(data.draw(mutated_json(json.loads(str(arrays[name])))))
        else:
            arrays[name] = data.draw(
                st.sampled_from(
                    [
                        arrays[name][:-1],
                        arrays[name].astype(np.float64) * -1.5 if arrays[name].dtype.kind in "iuf" else arrays[name],
                        np.full(arrays[name].shape, np.nan) if arrays[name].dtype.kind in "f" else arrays[name][::-1],
                        np.array(["x"] * max(arrays[name].size, 1)),
                        np.array(2**62, dtype=np.int64),
                        np.zeros((2, 2, 2)),
                    ]
                )
            )
            if data.draw(st.booleans()):
                del arrays[data.draw(st.sampled_from(sorted(arrays)))]
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        damaged = buffer.getvalue()
    _check_bytes(load_fleet, damaged, "fleet.npz", lambda fleet, out: save_fleet(out, fleet))


def _check_bytes(read: Callable[[Path], Any], payload: bytes, name: str, write: Callable[[Any, Path], None]) -> None:
    """``_check`` for a binary input file named ``name``."""
    with tempfile.TemporaryDirectory() as folder:
        source, out = Path(folder) / name, Path(folder) / "out" / "output.json"
        source.write_bytes(payload)
        try:
            write(read(source), out)
        except HierFedLoraError:
            pass
        assert not [p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]
        if out.exists():
            json.loads(out.read_text(encoding="utf-8"))


@MORE
@given(data=st.data())
def test_fuzzed_fault_files_fail_cleanly(data):
    """A mutated --faults file is read as `run` reads it (file, then flags on top) or fails with a HierFedLoraError."""
    import argparse

    from hierfedlora.commands.faults import build_faults
    from hierfedlora.runtime.faults import FaultOptions

    base = FaultOptions(dropout=0.2, straggler_frac=0.1, deadline_quantile=0.9, poison_frac=0.1)
    text = data.draw(mutated_json(to_dict(base)))
    flags = dict(dropout=None, straggler_frac=None, straggler_factor=None, deadline_quantile=None, poison_frac=None)
    flags[data.draw(st.sampled_from(sorted(flags)))] = data.draw(st.sampled_from([None, 0.5, float("nan"), -1.0, 2.0]))

    def read(path: Path) -> Any:
        faults = build_faults(argparse.Namespace(faults=path, **flags))
        assert isinstance(faults, FaultOptions)
        return faults

    _check(read, text, lambda faults, out: write_json(out, faults))


@MORE
@given(data=st.data())
def test_fuzzed_convergence_files_fail_cleanly(data):
    """A mutated convergence file (plan/whatif --convergence, calibrate --prior) parses or fails cleanly."""
    from hierfedlora.planner.types import ConvergenceParams

    text = data.draw(mutated_json(to_dict(ConvergenceParams())))
    _check(lambda path: read_json(ConvergenceParams, path), text, lambda params, out: write_json(out, params))


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_fuzzed_whatif_studies_fail_cleanly(bases, data):
    """A mutated study file (and a mutated tier-mix file it names) is refused with a HierFedLoraError before any
    point runs, or its first point plans into a row (a planner failure is a row, never an exception)."""
    from hierfedlora.planner.io import from_dict, parse_json, read_text
    from hierfedlora.planner.whatif import Study, check_study_inputs, run_point, study_points

    folder = Path(tempfile.mkdtemp(prefix="fuzz-study-", dir=bases["folder"]))
    mix = folder / "mix.json"
    mix.write_text(
        data.draw(mutated_json({"laptop": 1, "phone-flagship": 2})), encoding="utf-8", errors="surrogatepass"
    )
    study = {
        "fleet_sizes": [6],
        "tier_mixes": ["paper", str(mix)],
        "backhaul_mbps": [5.0, 50.0],
        "num_classes": 3,
        "samples_per_device": 8,
        "problem": {"num_groups": 2, "solver": {"grouping_method": "flow", "time_limit_s": 5.0}},
    }
    text = data.draw(mutated_json(study))

    def read(path: Path) -> Any:
        parsed = from_dict(Study, parse_json(read_text(path), source=path.name), source=path.name)
        check_study_inputs(parsed)
        row = run_point(next(iter(study_points(parsed))))
        assert row.status
        return row

    _check(read, text, lambda row, out: write_json(out, row))


@st.composite
def mutated_jsonl(draw: st.DrawFn) -> str:
    rows = [{"text": f"sample {i} of class {i % 3}", "label": f"c{i % 3}"} for i in range(36)]
    lines = [json.dumps(row) for row in rows]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        lines[at] = draw(
            st.one_of(
                mutated_json(rows[at]),
                st.just(lines[at][: len(lines[at]) // 2]),
                st.just(""),
                st.just("\ufeff" + lines[at]),
                st.just('{"text": ' + "[" * 3000 + "]" * 3000 + ', "label": "c1"}'),
                st.text(max_size=12),
            )
        )
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


@MORE
@given(text=mutated_jsonl())
def test_fuzzed_jsonl_data_fail_cleanly(text):
    """A mutated JSONL data file reads (and makes a fleet) or fails with a HierFedLoraError."""
    from hierfedlora.planner.fleets.datasets import read_jsonl

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            fleet = make_fleet(read_jsonl(path), num_devices=3, partition="iid", seed=0)
            save_fleet(Path(folder) / "out" / "fleet.json", fleet)
        except HierFedLoraError:
            pass
        assert not [p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]


def _run_folder(folder: Path) -> None:
    """A committed 3-round run folder, as the engine leaves it (checkpoint, tensor file, report log)."""
    from hierfedlora.runtime.checkpoint import ReportLog, save_checkpoint
    from tests.runtime.test_checkpoint import make_report, make_state, make_tensors

    with ReportLog.open(folder / "reports.jsonl") as log:
        for global_round in (1, 2, 3):
            save_checkpoint(folder, make_state(global_round), make_tensors(global_round))
            log.append(make_report(global_round))


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_fuzzed_run_folders_resume_or_fail_cleanly(bases, data):
    """A committed run folder with one file damaged (checkpoint.json mutated; the tensor file's bytes flipped or
    cut, with or without a matching sha256; report lines cut, doubled, swapped or mutated; a file deleted or a
    folder in its place) is checked, loaded and repaired as `run --resume` does before training: only the
    package's errors escape, and a repaired log holds exactly the checkpoint's rounds 1..c, each once."""
    import hashlib
    import shutil

    from hierfedlora.runtime.checkpoint import load_checkpoint, read_reports
    from hierfedlora.runtime.run_folder import check_run_folder, repair_report_log

    folder = Path(tempfile.mkdtemp(prefix="fuzz-run-", dir=bases["folder"]))
    _run_folder(folder)
    manifest = json.loads((folder / "checkpoint.json").read_text())
    tensor = folder / manifest["tensor_file"]
    target = data.draw(st.sampled_from(["manifest", "tensor", "tensor+sha", "reports", "reports", "delete", "dir"]))
    if target == "manifest":
        (folder / "checkpoint.json").write_text(data.draw(mutated_json(manifest)), errors="surrogatepass")
    elif target.startswith("tensor"):
        damaged = data.draw(damaged_bytes(tensor.read_bytes()))
        tensor.write_bytes(damaged)
        if target == "tensor+sha":  # a forged manifest: the bytes are checked as safetensors, not only by sha
            manifest["tensor_sha256"] = hashlib.sha256(damaged).hexdigest()
            (folder / "checkpoint.json").write_text(json.dumps(manifest))
    elif target == "reports":
        lines = (folder / "reports.jsonl").read_text().splitlines(keepends=True)
        at = data.draw(st.integers(min_value=0, max_value=len(lines) - 1))
        change = data.draw(st.sampled_from(["cut", "drop", "double", "swap", "mutate", "garbage"]))
        if change == "cut":
            lines = [*lines[:at], lines[at][: data.draw(st.integers(min_value=0, max_value=len(lines[at])))]]
        elif change == "drop":
            del lines[at]
        elif change == "double":
            lines.insert(at, lines[at])
        elif change == "swap":
            lines[at], lines[-1] = lines[-1], lines[at]
        elif change == "mutate":
            lines[at] = data.draw(mutated_json(json.loads(lines[at]))).replace("\n", " ") + "\n"
        else:
            lines.insert(at, data.draw(st.text(max_size=20)) + "\n")
        (folder / "reports.jsonl").write_text("".join(lines), errors="surrogatepass")
    else:
        victim = folder / data.draw(st.sampled_from(["checkpoint.json", "reports.jsonl", tensor.name]))
        victim.unlink()
        if target == "dir":
            victim.mkdir()
    # Act
    try:
        check_run_folder(folder, resume=True)
        if (folder / "checkpoint.json").exists():
            state, _ = load_checkpoint(
                folder, expected_plan_id="plan0", expected_fleet_sha256="f" * 64, expected_model_sha256="m" * 64
            )
            reports = repair_report_log(folder)
            # Assert: the repaired log is the committed rounds, once each
            assert [r.global_round for r in reports] == list(range(1, state.global_round + 1))
            assert [r.global_round for r in read_reports(folder / "reports.jsonl")] == list(
                range(1, state.global_round + 1)
            )
    except HierFedLoraError:
        pass
    assert not [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]
    shutil.rmtree(folder)
