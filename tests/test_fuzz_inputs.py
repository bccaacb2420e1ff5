"""Property-based fuzzing of every input reader: fleets, cost models, plans, presets and CSV data.

Each case mutates a valid file (a value replaced by a hostile one: NaN, 1e308, a 10**30 count, null, a
list where a number belongs, nesting 5,000 deep, a byte order mark, a truncation, a deleted or unknown
key) and reads it the way the CLI does, then writes what it read. The properties:

- no exception escapes except the package's own (``HierFedLoraError``): never a traceback;
- no output file is left half-written: an output is absent or parses back whole, and no temporary
  file remains.

Hypothesis runs derandomized (a fixed seed, the same cases every run) and without its example
database, with 130 cases per reader (650 in all).
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
from hierfedlora.planner.datasets import read_csv
from hierfedlora.planner.errors import HierFedLoraError
from hierfedlora.planner.fleet import load_fleet, make_fleet, save_fleet
from hierfedlora.planner.io import read_json, to_dict, write_json
from hierfedlora.planner.outcomes import Group, Plan, Skew, SolveStatus
from hierfedlora.planner.types import CostModel
from hierfedlora.validation.experiment_presets import PRESETS, read_preset
from tests.factories import make_cost_model

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
    ids = [d.device_id for d in fleet.devices]
    skew = Skew(kl=0.0, l1=0.0, hellinger=0.0)
    plan = Plan(
        groups=(
            Group(group_id=0, device_ids=tuple(ids[:2]), depth=1, intra_rounds=2, local_steps=2, label_skew=skew),
            Group(group_id=1, device_ids=tuple(ids[2:]), depth=2, intra_rounds=1, local_steps=2, label_skew=skew),
        ),
        predicted_round_time_s=1.0,
        predicted_rounds_to_target=3.0,
        objective_value=3.0,
        dual_bound=3.0,
        status=SolveStatus.OPTIMAL,
        solve_time_s=0.0,
        solver="hand",
        seed=0,
        batch_size=4,
    )
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
