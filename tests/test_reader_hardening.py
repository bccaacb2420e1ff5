"""Bad input and a failing environment end as one line, never a traceback: each case the outside check of the
readers found (deep JSON, null indices, unhashable preset entries, huge or non-finite numbers, strict CSV, a
BOM, a full or read-only disk), and files written with the permissions the umask allows."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import tempfile
from pathlib import Path

import pytest

from hierfedlora import cli
from hierfedlora.commands.common import read_json_object
from hierfedlora.planner.errors import InvalidInputError, RunInterruptedError
from hierfedlora.planner.fleet import load_fleet, make_fleet, save_fleet
from hierfedlora.planner.fleets.datasets import read_csv, read_jsonl
from hierfedlora.planner.io import MAX_JSON_DEPTH, from_dict, parse_json, read_json, to_dict, write_json
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.types import CostModel
from hierfedlora.validation.experiment_presets import PRESETS, ExperimentPreset
from tests.factories import make_cost_model

DEEP = "[" * 5000 + "]" * 5000
CSV_ROWS = ["text,label"] + [f"sample {i} of class {i % 3},c{i % 3}" for i in range(30)]


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_text("\n".join(CSV_ROWS) + "\n")
    path = tmp_path / "fleet.json"
    save_fleet(path, make_fleet(read_csv(tmp_path / "data.csv"), num_devices=3, partition="iid", seed=0))
    return path


def _plan_dict() -> dict:
    from hierfedlora.planner.outcomes import Group, Skew, SolveStatus

    skew = Skew(kl=0.0, l1=0.0, hellinger=0.0)
    group = Group(group_id=0, device_ids=("a", "b"), depth=1, intra_rounds=1, local_steps=1, label_skew=skew)
    return to_dict(
        Plan(
            groups=(group,),
            predicted_round_time_s=1.0,
            predicted_rounds_to_target=3.0,
            objective_value=3.0,
            dual_bound=3.0,
            status=SolveStatus.OPTIMAL,
            solve_time_s=0.0,
            solver="hand",
            seed=0,
        )
    )


def test_json_nested_5000_deep_is_invalid_input_in_every_reader(tmp_path):
    """A contract file, a CLI JSON object, a JSONL data line: each is one issue, not a RecursionError."""
    # Arrange
    (tmp_path / "plan.json").write_text(json.dumps({"groups": "__"}).replace('"__"', DEEP))
    (tmp_path / "problem.json").write_text('{"a": ' + DEEP + "}")
    (tmp_path / "data.jsonl").write_text('{"text": "a", "label": "x"}\n' + DEEP + "\n")
    # Act
    errors = []
    for read in (
        lambda: read_json(Plan, tmp_path / "plan.json"),
        lambda: read_json_object(tmp_path / "problem.json"),
        lambda: read_jsonl(tmp_path / "data.jsonl"),
        lambda: parse_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)),
    ):
        with pytest.raises(InvalidInputError) as caught:
            read()
        errors.append(str(caught.value))
    # Assert
    assert all(f"JSON nested at most {MAX_JSON_DEPTH} levels deep" in e for e in errors), errors
    assert errors[2].startswith("data.jsonl: line 2 must be")
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)  # the bound itself is fine


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"x": NaN}', "a finite number (strict JSON has no NaN or Infinity); got 'NaN'"),
        ('{"x": -Infinity}', "got '-Infinity'"),
        ('{"x": 1e400}', "a finite number of at most 64 characters; got '1e400'"),
        ('{"x": ' + "9" * 5000 + "}", "a number of at most 64 digits"),
    ],
)
def test_non_finite_and_overlong_numbers_are_refused_when_parsed(text, expected):
    """NaN, infinity, a float overflow or a 5,000-digit integer never reach a field, a solver or a writer."""
    with pytest.raises(InvalidInputError) as caught:
        parse_json(text, source="plan.json")
    assert str(caught.value).startswith("plan.json: ") and expected in str(caught.value)


def test_a_refused_number_is_named_by_its_path():
    """The error names the field holding NaN, as a field rule would."""
    with pytest.raises(InvalidInputError) as caught:
        parse_json('{"devices": [{"a": 1}, {"uplink_mbps": NaN}]}', source="fleet.json")
    assert str(caught.value).startswith("fleet.json: devices[1].uplink_mbps must be a finite number")


def test_json_with_a_byte_order_mark_reads_like_csv_does(tmp_path):
    """A UTF-8 BOM (Windows editors add one) is skipped in JSON as in CSV."""
    path = tmp_path / "cost.json"
    path.write_text("\ufeff" + json.dumps(to_dict(make_cost_model(2))), encoding="utf-8")
    assert read_json(CostModel, path) == make_cost_model(2)


def test_null_sample_indices_are_named(fleet_file):
    """`sample_indices[i] = null` is one issue on that field (it was a TypeError)."""
    # Arrange
    data = json.loads(fleet_file.read_text())
    data["sample_indices"][1] = None
    fleet_file.write_text(json.dumps(data))
    # Act
    with pytest.raises(InvalidInputError) as caught:
        load_fleet(fleet_file)
    # Assert
    assert "sample_indices must be a list with a list of row positions per device" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fleet_sizes", [[12]], "fleet_sizes must be a non-empty list of distinct device counts"),
        ("seeds", [[0], 1], "seeds must be a non-empty list of distinct integers >= 0"),
        ("alphas", [{"a": 1}], "alphas must be a non-empty list of distinct Dirichlet concentrations"),
        ("methods", 1, "methods must be a non-empty list of distinct method names; got 1"),
        ("methods", [["fedlora"]], "methods must be a non-empty list of distinct method names"),
        ("fleet_sizes", [200000], "device counts (integers 1..10000); got (200000,)"),
        ("single_seed_alphas", 5, "single_seed_alphas must be a list"),
        ("name", "../elsewhere", "name must be a non-empty name of letters"),
    ],
)
def test_preset_tuples_are_type_checked(field, value, message):
    """Unhashable entries, a number where a list belongs, an impossible fleet size: one issue each."""
    with pytest.raises(InvalidInputError) as caught:
        from_dict(ExperimentPreset, {**to_dict(PRESETS["quick"]), field: value}, source="preset.json")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layer_forward_s", [1e308, 1e308], "layer_forward_s must be a non-empty list of finite numbers > 0, at most"),
        ("head_step_s", 1e12, "head_step_s must be a finite number >= 0, at most 10000"),
        ("base_model_bytes", 10**30, "base_model_bytes must be an integer >= 1, at most"),
    ],
)
def test_cost_model_numbers_have_upper_bounds(field, value, message):
    """A layer time of 1e308 is bad input (exit 2), not a solver failure later (it was exit 4)."""
    with pytest.raises(InvalidInputError) as caught:
        from_dict(CostModel, {**to_dict(make_cost_model(2)), field: value})
    assert message in str(caught.value)


def test_device_and_plan_numbers_have_upper_bounds_and_fingerprints_are_strings(fleet_file):
    """A 10**30 label count (an int64 overflow in the planner), a plan's non-finite or huge times, and
    a non-string cost_model_sha256 are refused by field."""
    # Arrange
    fleet = json.loads(fleet_file.read_text())
    fleet["devices"][0]["label_counts"][0] = 10**30
    fleet_file.write_text(json.dumps(fleet))
    plan = _plan_dict()
    # Act
    with pytest.raises(InvalidInputError) as device_error:
        load_fleet(fleet_file)
    plan_errors = []
    for change in ({"grouping_objective": float("nan")}, {"objective_value": 1e300}, {"cost_model_sha256": 7}):
        with pytest.raises(InvalidInputError) as caught:
            from_dict(Plan, {**plan, **change})
        plan_errors.append(str(caught.value))
    # Assert
    assert "devices[0].label_counts must be a non-empty list of integers >= 0" in str(device_error.value)
    assert "at most 1e+12" in str(device_error.value)
    assert "grouping_objective must be a finite number; got nan" in plan_errors[0]
    assert "objective_value must be a finite number, at most 1e+12; got 1e+300" in plan_errors[1]
    assert "cost_model_sha256 must be a string; got 7" in plan_errors[2]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sample x,c1,extra", "line 5 must be 2 values (one per header column); got 3 values"),
        ("text,label", "line 5 must be a data row; got 'the header repeated'"),
        ("only text", "line 5.label must be present"),
    ],
)
def test_csv_rows_must_match_the_header(tmp_path, line, message):
    """More values than columns, the header repeated, too few values: a line-numbered error, nothing dropped."""
    path = tmp_path / "data.csv"
    rows = [*CSV_ROWS[:4], line, *CSV_ROWS[4:]]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InvalidInputError) as caught:
        read_csv(path)
    assert f"data.csv: {message}" in str(caught.value)


def test_too_few_values_in_an_ignored_column_is_named(tmp_path):
    """A three-column file whose row lacks the third (ignored) value is still a short row."""
    path = tmp_path / "data.csv"
    path.write_text("text,label,source\na,b,web\nc,d\n")
    with pytest.raises(InvalidInputError, match=re.escape("line 3 must be 3 values (one per header column); got 2")):
        read_csv(path)


@pytest.mark.parametrize(
    ("code", "reason", "patched"),
    [
        (errno.ENOSPC, "No space left on device", "replace"),
        (errno.EROFS, "Read-only file system", "mkstemp"),
        (errno.EACCES, "Permission denied", "mkstemp"),
    ],
)
def test_storage_errors_exit_74_naming_the_path(tmp_path, monkeypatch, capsys, code, reason, patched):
    """A full disk, a read-only folder, no permission: exit 74, one line naming the output file, no traceback,
    no temporary file left."""
    # Arrange
    (tmp_path / "data.csv").write_text("\n".join(CSV_ROWS) + "\n")
    out = tmp_path / "out" / "fleet.json"

    def fail(*_args, **_kwargs):
        raise OSError(code, reason)

    if patched == "replace":
        monkeypatch.setattr(os, "replace", fail)
    else:
        monkeypatch.setattr(tempfile, "mkstemp", fail)
    # Act
    status = cli.main(["fleet", "--data", str(tmp_path / "data.csv"), "--devices", "3", "--out", str(out)])
    # Assert
    err = capsys.readouterr().err
    assert status == 74
    assert f"error: cannot write {out}: {reason}" in err and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_file_system_error_no_writer_wrapped_still_names_its_path(monkeypatch, capsys, tmp_path):
    """The CLI's last line of defence: an OSError of the environment is exit 74 with its file, not a bug."""

    # Arrange
    def handler(_args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x.png"))

    monkeypatch.setattr(cli, "build_parser", _parser_with(handler))
    # Act
    status = cli.main(["boom"])
    # Assert
    assert status == 74 and f"cannot read or write {tmp_path / 'x.png'}: Permission denied" in capsys.readouterr().err


def _parser_with(handler):
    import argparse

    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="hierfedlora")
        parser.add_argument("-v", "--verbose", action="store_true")
        commands = parser.add_subparsers(dest="command")
        commands.add_parser("boom").set_defaults(handler=handler)
        return parser

    return build


def test_each_internal_error_saves_its_own_traceback(monkeypatch, capsys):
    """Two failures, two traceback files (one fixed path let concurrent failures overwrite each other)."""

    # Arrange
    def handler(_args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "build_parser", _parser_with(handler))
    # Act
    codes = [cli.main(["boom"]), cli.main(["boom"])]
    paths = re.findall(r"Traceback saved to (\S+)", capsys.readouterr().err)
    # Assert
    assert codes == [70, 70] and len(set(paths)) == 2
    assert all("RuntimeError: a bug" in Path(p).read_text() for p in paths)
    for p in paths:
        Path(p).unlink()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    """Atomic writes give what `open` would: 0o666 less the umask (they were always 0o600)."""
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "cost.json", make_cost_model(2))
    finally:
        os.umask(previous)
    assert (tmp_path / "cost.json").stat().st_mode & 0o777 == mode


def test_the_ctrl_c_hint_is_the_clis_own_syntax():
    """`--resume` is a flag of the same command, not `--resume DIR`."""
    text = str(RunInterruptedError(3, "runs/a"))
    assert "run the same command again with --resume added" in text and "--resume runs/a" not in text


def test_calibrate_refuses_a_finished_run_whose_report_log_is_empty(tmp_path):
    """A run with result.json but an empty reports.jsonl is named, not silently dropped from the fit."""
    # Arrange
    from hierfedlora.validation.calibration import experiment_runs

    preset = dataclasses.replace(PRESETS["quick"], methods=("fedlora",))
    write_json(tmp_path / "preset.json", preset)
    write_json(tmp_path / "cost_model.json", make_cost_model(6))
    (setting,) = preset.settings()
    folder = tmp_path / "runs" / setting.name
    folder.mkdir(parents=True)
    (tmp_path / "data.csv").write_text("\n".join(CSV_ROWS) + "\n")
    save_fleet(folder / "fleet.json", make_fleet(read_csv(tmp_path / "data.csv"), num_devices=6, seed=0))
    (folder / "fedlora" / "run").mkdir(parents=True)
    (folder / "fedlora" / "run" / "reports.jsonl").write_text("")
    (folder / "fedlora" / "result.json").write_text("{}")
    # Act
    with pytest.raises(InvalidInputError) as caught:
        experiment_runs(tmp_path)
    # Assert
    assert f"{setting.name}/fedlora/run/reports.jsonl must be the reports of the finished run's rounds" in str(
        caught.value
    )


def test_an_experiment_the_data_cannot_fill_writes_nothing(tmp_path):
    """200 devices from 30 rows cannot be partitioned: the error comes before preset.json, data.json or
    cost_model.json is written, so the corrected preset can use the folder."""
    from hierfedlora.validation.experiments import run_experiment

    (tmp_path / "data.csv").write_text("\n".join(CSV_ROWS) + "\n")
    preset = dataclasses.replace(PRESETS["quick"], fleet_sizes=(200,), data=str(tmp_path / "data.csv"))
    with pytest.raises(InvalidInputError, match="at least num_devices x min_samples_per_device"):
        run_experiment(preset, tmp_path / "out", cost_model=make_cost_model(6))
    assert not (tmp_path / "out").exists()


def test_a_memory_need_past_int64_is_invalid_input_not_an_overflow():
    """Each field within its bound, yet activation bytes x batch x layers past 2**63: make_plan names the
    cost model (it was an OverflowError building the planner's int64 arrays)."""
    from hierfedlora.planner.plan import make_plan
    from hierfedlora.planner.types import PlanningProblem
    from tests.factories import make_devices

    cost = dataclasses.replace(make_cost_model(6), activation_bytes_per_sample_per_layer=2**49)
    problem = PlanningProblem(devices=make_devices(6), cost_model=cost, num_groups=2, batch_size=2**19)
    with pytest.raises(InvalidInputError, match="peak training memory is at most"):
        make_plan(problem)


def test_the_whatif_and_npz_fleet_readers_bound_json_too(tmp_path):
    """A what-if study's cost model file and an .npz fleet's metadata nested 5,000 deep: invalid input."""
    import numpy as np

    from hierfedlora.planner.fleets.fleet_store import read_fleet_npz, write_fleet_npz
    from hierfedlora.planner.whatif import load_cost_model

    (tmp_path / "cost.json").write_text('{"layer_forward_s": ' + DEEP + "}")
    (tmp_path / "data.csv").write_text("\n".join(CSV_ROWS) + "\n")
    write_fleet_npz(tmp_path / "f.npz", make_fleet(read_csv(tmp_path / "data.csv"), num_devices=3, seed=0))
    with np.load(tmp_path / "f.npz", allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["meta"] = np.array('{"class_names": ' + DEEP + "}")
    np.savez(tmp_path / "deep.npz", **arrays)
    with pytest.raises(InvalidInputError, match=r"a readable cost model or config\.json file"):
        load_cost_model(str(tmp_path / "cost.json"), num_classes=3, batch_size=8, seq_len=16, lora_rank=8)
    with pytest.raises(InvalidInputError):
        read_fleet_npz(tmp_path / "deep.npz")


def test_a_full_disk_while_appending_a_report_names_the_log(tmp_path, monkeypatch):
    """ENOSPC from the report log's write is a StorageError naming reports.jsonl (it named no file)."""
    from hierfedlora.planner.errors import StorageError
    from hierfedlora.runtime.checkpoint import ReportLog
    from tests.factories import make_round_report

    report = make_round_report(from_dict(Plan, _plan_dict()), 1)
    log = ReportLog.open(tmp_path / "reports.jsonl")

    def full(_fd, _data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError) as caught:
        log.append(report)
    log.close()
    assert str(caught.value) == f"cannot append to {tmp_path / 'reports.jsonl'}: No space left on device"
    assert caught.value.errno == errno.ENOSPC


@pytest.mark.parametrize(
    ("key", "value"),
    [("intermediate_size", "x"), ("num_key_value_heads", []), ("max_position_embeddings", 2.5),
     ("type_vocab_size", -1), ("num_attention_heads", 2**40), ("num_hidden_layers", 2**31), ("vocab_size", 10**30)],
)  # fmt: skip
def test_an_analytic_config_names_every_bad_size(key, value):
    """A config.json's optional sizes are checked like the required ones, and sizes have upper bounds (2**31
    layers once ran out of memory building per-layer costs): invalid input naming the key, never a crash."""
    from hierfedlora.planner.analytic_costs import model_shape

    # Arrange
    config = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
              "vocab_size": 30522, "intermediate_size": 1536, key: value}  # fmt: skip
    # Act
    with pytest.raises(InvalidInputError) as info:
        model_shape(config)
    # Assert
    assert [issue.path for issue in info.value.issues] == [key]
    assert info.value.source == "config.json"


def test_an_npz_fleet_of_an_unknown_zip_version_is_invalid_input(tmp_path):
    """A byte flipped in a zip header can claim a zip version Python cannot read (NotImplementedError, once
    exit 70): invalid input naming the file."""
    # Arrange
    (tmp_path / "data.csv").write_text("\n".join(CSV_ROWS) + "\n")
    save_fleet(tmp_path / "f.npz", make_fleet(read_csv(tmp_path / "data.csv"), num_devices=3, seed=0))
    raw = bytearray((tmp_path / "f.npz").read_bytes())
    at = raw.index(b"PK\x01\x02")  # the first central directory entry; +6 is "version needed to extract"
    raw[at + 6 : at + 8] = (107).to_bytes(2, "little")
    (tmp_path / "f.npz").write_bytes(bytes(raw))
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_fleet(tmp_path / "f.npz")
    # Assert
    assert info.value.source == "f.npz" and "a fleet .npz file" in str(info.value)


def test_a_problem_or_convergence_that_is_not_an_object_is_named(tmp_path, capsys):
    """A study whose `problem` is a number, and a problem whose `convergence` is a list while --convergence adds
    fields to it, were TypeErrors (exit 70): exit 2 naming the field, nothing written."""
    # Arrange
    study, problem, convergence = tmp_path / "study.json", tmp_path / "problem.json", tmp_path / "c.json"
    study.write_text('{"problem": 7}')
    problem.write_text('{"convergence": [1]}')
    convergence.write_text('{"depth_exponent": 0.2}')
    (tmp_path / "data.csv").write_text("\n".join(CSV_ROWS) + "\n")
    save_fleet(tmp_path / "fleet.json", make_fleet(read_csv(tmp_path / "data.csv"), num_devices=3, seed=0))
    write_json(tmp_path / "cost.json", make_cost_model(2))
    # Act
    studied = cli.main(["whatif", "--study", str(study), "--out", str(tmp_path / "w")])
    study_err = capsys.readouterr().err
    inputs = [str(tmp_path / "fleet.json"), "--cost-model", str(tmp_path / "cost.json"), "--problem", str(problem)]
    planned = cli.main(["plan", *inputs, "--convergence", str(convergence), "--out", str(tmp_path / "p.json")])
    plan_err = capsys.readouterr().err
    # Assert
    assert studied == 2 and "study.json: problem must be an object of PlanningProblem fields; got 7" in study_err
    assert planned == 2 and "problem: convergence must be an object of ConvergenceParams fields; got [1]" in plan_err
    assert not (tmp_path / "w").exists() and not (tmp_path / "p.json").exists()


def test_solver_seeds_and_study_sizes_have_upper_bounds():
    """A 2**63 solver seed reached CP-SAT and came back as a solver failure (exit 4), and a study's 10**30
    samples per device overflowed numpy's multinomial (exit 70): both are invalid input naming the field."""
    from hierfedlora.planner.types import SolverOptions
    from hierfedlora.planner.whatif import Study

    # Act
    with pytest.raises(InvalidInputError) as seed:
        SolverOptions(seed=2**63)
    with pytest.raises(InvalidInputError) as study:
        Study(fleet_sizes=(10**8,), samples_per_device=10**30)
    # Assert
    assert [i.path for i in seed.value.issues] == ["seed"] and "at most" in str(seed.value)
    assert sorted(i.path for i in study.value.issues) == ["fleet_sizes[0]", "samples_per_device"]
    assert SolverOptions(seed=2**31 - 1).seed == 2**31 - 1
