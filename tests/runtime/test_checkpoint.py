"""Checkpoints and the report log lose nothing: atomic saves, refused mismatches, repaired logs, SIGKILL."""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hierfedlora.planner.errors import InvalidInputError, ResumeMismatchError
from hierfedlora.planner.io import to_json
from hierfedlora.planner.outcomes import GroupRoundResult, RoundReport
from hierfedlora.runtime import run_state
from hierfedlora.runtime.checkpoint import (
    MANIFEST_NAME,
    REPORTS_NAME,
    RUN_STATE_RULES,
    TORCH_RNG_KEY,
    ReportLog,
    RunState,
    load_checkpoint,
    numpy_rng_state,
    read_reports,
    restore_numpy_rng,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = {"expected_plan_id": "plan0", "expected_fleet_sha256": "f" * 64, "expected_model_sha256": "m" * 64}


def make_report(global_round):
    """Round ``global_round``'s report, a pure function of the round (the SIGKILL worker runs this source)."""
    group = GroupRoundResult(
        group_id=0, loss=1.0 / global_round, accuracy=0.5, upload_bytes=10, download_bytes=10, sim_time_s=0.25
    )
    return RoundReport(
        plan_id="plan0",
        global_round=global_round,
        sim_time_s=1.5 * global_round,
        wall_time_s=0.01,
        groups=(group,),
        measured_step_s={"d0": 0.125},
        eval_loss=1.0 / global_round,
        eval_accuracy=0.5,
        seed=3,
    )


def make_state(global_round):
    """The run state after round ``global_round``."""
    return RunState(
        plan_id="plan0",
        fleet_sha256="f" * 64,
        model_sha256="m" * 64,
        global_round=global_round,
        sim_time_s=1.5 * global_round,
        seed=3,
        numpy_rng_state=numpy_rng_state(np.random.default_rng(global_round)),
        last_report=make_report(global_round) if global_round else None,
    )


def make_tensors(global_round):
    """Global adapters filled with the round number and a torch generator state."""
    return {
        "global.layers.5.query.lora_A": torch.full((256, 256), float(global_round)),
        "global.head.bias": torch.arange(4, dtype=torch.bfloat16) * global_round,
        TORCH_RNG_KEY: torch.Generator().manual_seed(global_round).get_state(),
    }


def assert_tensors_equal(found, expected):
    assert sorted(found) == sorted(expected)
    assert all(found[k].dtype == v.dtype and torch.equal(found[k], v) for k, v in expected.items())


def write_log(path: Path, rounds, tail: bytes = b"") -> None:
    path.write_bytes(b"".join((to_json(make_report(r), indent=None) + "\n").encode() for r in rounds) + tail)


# ---------------------------------------------------------------- checkpoints


def test_save_then_load_returns_state_tensors_and_generators(tmp_path):
    """State and tensors come back equal; restored generators continue the saved streams."""
    # Arrange
    numpy_rng, torch_rng = np.random.default_rng(11), torch.Generator().manual_seed(11)
    numpy_rng.random(3), torch.rand(3, generator=torch_rng)
    state = dataclasses.replace(make_state(2), numpy_rng_state=numpy_rng_state(numpy_rng))
    tensors = {**make_tensors(2), TORCH_RNG_KEY: torch_rng.get_state()}
    # Act
    save_checkpoint(tmp_path, state, tensors)
    loaded_state, loaded = load_checkpoint(tmp_path, **IDENTITY)
    # Assert
    assert loaded_state == state
    assert_tensors_equal(loaded, tensors)
    assert restore_numpy_rng(loaded_state.numpy_rng_state).random() == numpy_rng.random()
    resumed = torch.Generator().set_state(loaded[TORCH_RNG_KEY])
    assert torch.equal(torch.rand(5, generator=resumed), torch.rand(5, generator=torch_rng))


def test_only_the_last_checkpoint_is_kept(tmp_path):
    """After three saves one tensor file remains, the one the manifest names."""
    # Act
    for global_round in (1, 2, 3):
        save_checkpoint(tmp_path, make_state(global_round), make_tensors(global_round))
    # Assert
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_NAME, manifest["tensor_file"]])
    assert manifest["state"]["global_round"] == 3


@pytest.mark.parametrize("failing_call", [1, 2], ids=["tensor-file-replace", "manifest-replace"])
def test_a_crash_inside_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, failing_call):
    """os.replace failing for the tensor file or for the manifest leaves round 1 intact; the next save cleans up."""
    # Arrange
    save_checkpoint(tmp_path, make_state(1), make_tensors(1))
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    # Act
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, make_state(2), make_tensors(2))
    monkeypatch.setattr(os, "replace", real_replace)
    state, tensors = load_checkpoint(tmp_path, **IDENTITY)
    save_checkpoint(tmp_path, make_state(2), make_tensors(2))
    # Assert
    assert state == make_state(1)
    assert_tensors_equal(tensors, make_tensors(1))
    assert len(list(tmp_path.glob("checkpoint-*.safetensors"))) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_resaving_a_round_never_overwrites_the_committed_tensor_file(tmp_path, monkeypatch):
    """A second save of the same round writes a new file: a crash before its manifest keeps the first intact."""
    # Arrange
    save_checkpoint(tmp_path, make_state(1), make_tensors(1))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: _fail_on_manifest(real_replace, s, d))
    # Act
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, make_state(1), make_tensors(7))
    state, tensors = load_checkpoint(tmp_path, **IDENTITY)
    # Assert
    assert state == make_state(1)
    assert_tensors_equal(tensors, make_tensors(1))


def _fail_on_manifest(real_replace, src, dst):
    if Path(dst).name == MANIFEST_NAME:
        raise OSError("simulated crash")
    real_replace(src, dst)


@pytest.mark.parametrize("field", ["plan_id", "fleet_sha256", "model_sha256"])
def test_resume_refuses_another_runs_checkpoint(tmp_path, field):
    """Each identity field that differs raises ResumeMismatchError naming it, with both values."""
    # Arrange
    save_checkpoint(tmp_path, make_state(1), make_tensors(1))
    expected = {**IDENTITY, f"expected_{field}": "other"}
    # Act
    with pytest.raises(ResumeMismatchError) as info:
        load_checkpoint(tmp_path, **expected)
    # Assert
    assert (info.value.field, info.value.expected, info.value.found) == (field, "other", getattr(make_state(1), field))


@pytest.mark.parametrize("where", ["manifest", "state"])
def test_resume_refuses_another_schema_version(tmp_path, where):
    """A checkpoint written under schema 2 is a mismatch, not a parse error."""
    # Arrange
    save_checkpoint(tmp_path, make_state(1), make_tensors(1))
    path = tmp_path / MANIFEST_NAME
    data = json.loads(path.read_text())
    (data if where == "manifest" else data["state"])["schema_version"] = 2
    path.write_text(json.dumps(data))
    # Act
    with pytest.raises(ResumeMismatchError) as info:
        load_checkpoint(tmp_path, **IDENTITY)
    # Assert
    assert (info.value.field, info.value.expected, info.value.found) == ("schema_version", 1, 2)


def _break_manifest(path: Path, key: str, value: object) -> None:
    data = json.loads(path.read_text())
    target = data["state"] if key in data["state"] else data
    target[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "issue_path"),
    [
        ("no manifest", "run_dir"),
        ("not json", "line 1"),
        ("bad round", "state.global_round"),
        ("escaping name", "tensor_file"),
        ("missing tensors", "tensor_file"),
        ("flipped byte", "tensor_sha256"),
    ],
)
def test_a_missing_or_corrupt_checkpoint_is_a_clear_input_error(tmp_path, damage, issue_path):
    """Every damage gives an InvalidInputError naming what is wrong, never a traceback from deep inside."""
    # Arrange
    save_checkpoint(tmp_path, make_state(1), make_tensors(1))
    manifest = tmp_path / MANIFEST_NAME
    tensor_file = tmp_path / json.loads(manifest.read_text())["tensor_file"]
    if damage == "no manifest":
        manifest.unlink()
    elif damage == "not json":
        manifest.write_text("{not json")
    elif damage == "bad round":
        _break_manifest(manifest, "global_round", -1)
    elif damage == "escaping name":
        _break_manifest(manifest, "tensor_file", "../elsewhere.safetensors")
    elif damage == "missing tensors":
        tensor_file.unlink()
    else:
        payload = bytearray(tensor_file.read_bytes())
        payload[-1] ^= 0xFF
        tensor_file.write_bytes(bytes(payload))
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_checkpoint(tmp_path, **IDENTITY)
    # Assert
    assert [issue.path for issue in info.value.issues] == [issue_path]


def test_save_refuses_values_that_are_not_tensors(tmp_path):
    """A tensor name mapped to a list is reported, and nothing is written."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        save_checkpoint(tmp_path / "run", make_state(1), {"global.x": [1.0]})
    # Assert
    assert info.value.issues[0].path == "tensors['global.x']"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("field", "bad"), [(f, v) for f, r in RUN_STATE_RULES.items() for v in r.bad_values])
def test_run_state_reports_each_broken_field(field, bad):
    """A bad value is reported under its field's path, whatever the value."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        dataclasses.replace(make_state(0), **{field: bad})
    # Assert
    assert [issue.path for issue in info.value.issues] == [field]


def test_run_state_needs_the_report_of_its_round():
    """Round 2 without a report, or with round 1's, is refused; three broken fields give three issues."""
    # Act
    with pytest.raises(InvalidInputError) as missing:
        dataclasses.replace(make_state(2), last_report=None)
    with pytest.raises(InvalidInputError) as wrong:
        dataclasses.replace(make_state(2), last_report=make_report(1))
    with pytest.raises(InvalidInputError) as three:
        dataclasses.replace(make_state(2), plan_id="", sim_time_s=math.nan, last_report=make_report(1))
    # Assert
    assert [i.path for i in missing.value.issues] == ["last_report"]
    assert [i.path for i in wrong.value.issues] == ["last_report.global_round"]
    assert [i.path for i in three.value.issues] == ["plan_id", "sim_time_s", "last_report.global_round"]


# ---------------------------------------------------------------- the report log


def test_log_appends_one_fsynced_line_per_round_in_order(tmp_path):
    """Appended reports read back equal; a report out of order is refused and not written."""
    # Arrange
    path = tmp_path / REPORTS_NAME
    # Act
    with ReportLog.open(path) as log:
        log.append(make_report(1))
        log.append(make_report(2))
        with pytest.raises(InvalidInputError) as info:
            log.append(make_report(4))
    # Assert
    assert info.value.issues[0].path == "report.global_round"
    assert read_reports(path) == [make_report(1), make_report(2)]


def test_a_new_run_refuses_a_log_that_holds_reports(tmp_path):
    """Starting afresh over an existing log would lose it: refused, file untouched."""
    # Arrange
    path = tmp_path / REPORTS_NAME
    write_log(path, [1])
    before = path.read_bytes()
    # Act
    with pytest.raises(InvalidInputError) as info:
        ReportLog.open(path)
    # Assert
    assert info.value.issues[0].path == REPORTS_NAME
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("rounds", "tail", "committed"),
    [
        ([1, 2, 3], b'{"plan_id": "pla', 3),  # partial last line cut
        ([1, 2, 3, 4, 5], b"", 3),  # rounds past the checkpoint cut
        ([1, 2], b'{"plan_id": "pla', 3),  # checkpoint 3 committed, line 3 torn: re-appended
        ([1, 2], b"", 3),  # checkpoint 3 committed, line 3 never started: re-appended
        ([1, 2], b"garbage\n", 3),  # damaged complete last line: dropped and re-appended
        ([], b"", 0),  # nothing committed
    ],
)
def test_resume_repairs_the_log_to_rounds_one_to_c(tmp_path, rounds, tail, committed):
    """(R2) After open for resume the log is byte-identical to an uninterrupted run's rounds 1..c."""
    # Arrange
    path, reference = tmp_path / REPORTS_NAME, tmp_path / "reference.jsonl"
    write_log(path, rounds, tail)
    write_log(reference, range(1, committed + 1))
    # Act
    with ReportLog.open(path, resume_state=make_state(committed)) as log:
        last_round = log.last_round
        log.append(make_report(committed + 1))
    # Assert
    assert last_round == committed
    next_line = (to_json(make_report(committed + 1), indent=None) + "\n").encode()
    assert path.read_bytes() == reference.read_bytes() + next_line


@pytest.mark.parametrize(
    ("rounds", "message"),
    [([1], "rounds 1..2 at least"), ([1, 3, 2], "round 2"), ([1, 1, 2], "round 2")],
    ids=["lines-lost", "out-of-order", "repeated"],
)
def test_resume_refuses_a_log_it_cannot_prove_complete(tmp_path, rounds, message):
    """A log missing committed rounds, or with rounds out of order or repeated, is refused and left as is."""
    # Arrange
    path = tmp_path / REPORTS_NAME
    write_log(path, rounds)
    before = path.read_bytes()
    # Act
    with pytest.raises(InvalidInputError) as info:
        ReportLog.open(path, resume_state=make_state(3))
    # Assert
    assert message in str(info.value)
    assert path.read_bytes() == before


def test_resume_refuses_a_log_whose_last_round_differs_from_the_checkpoint(tmp_path):
    """Round c in the log must be the checkpoint's report of round c (else the log is another run's)."""
    # Arrange
    path = tmp_path / REPORTS_NAME
    write_log(path, [1, 2])
    state = dataclasses.replace(make_state(2), last_report=dataclasses.replace(make_report(2), eval_accuracy=0.9))
    # Act
    with pytest.raises(InvalidInputError) as info:
        ReportLog.open(path, resume_state=state)
    # Assert
    assert info.value.issues[0].path == f"{REPORTS_NAME} line 2"


def test_read_reports_skips_a_partial_line_and_names_a_bad_one(tmp_path):
    """A trailing partial line was never committed; a broken complete line is reported by number."""
    # Arrange
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write_log(good, [1, 2], b'{"plan')
    bad.write_bytes(good.read_bytes().replace(b'"global_round": 2', b'"global_round": 0'))
    # Act
    reports = read_reports(good)
    with pytest.raises(InvalidInputError) as info:
        read_reports(bad)
    # Assert
    assert reports == [make_report(1), make_report(2)]
    assert str(info.value).startswith("bad.jsonl line 2: global_round must be an integer >= 1")


# ---------------------------------------------------------------- SIGKILL

WORKER = """
import sys
from pathlib import Path
import numpy as np
import torch
from hierfedlora.planner.outcomes import GroupRoundResult, RoundReport
from hierfedlora.runtime.checkpoint import (
    REPORTS_NAME, TORCH_RNG_KEY, ReportLog, RunState, load_checkpoint, numpy_rng_state, save_checkpoint)
IDENTITY = {identity!r}
{helpers}
run_dir, last_round = Path(sys.argv[1]), int(sys.argv[2])
if (run_dir / "checkpoint.json").exists():
    state, _ = load_checkpoint(run_dir, **IDENTITY)
    log = ReportLog.open(run_dir / REPORTS_NAME, resume_state=state)
else:
    log = ReportLog.open(run_dir / REPORTS_NAME)
print("ready", flush=True)
for global_round in range(log.last_round + 1, last_round + 1):
    save_checkpoint(run_dir, make_state(global_round), make_tensors(global_round))  # (P1)
    log.append(make_report(global_round))  # (P2)
log.close()
"""


def _run_worker(run_dir: Path, last_round: int) -> subprocess.Popen[bytes]:
    helpers = "\n".join(inspect.getsource(f) for f in (make_report, make_state, make_tensors))
    code = WORKER.format(identity=IDENTITY, helpers=helpers)
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir), str(last_round)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line == b"ready\n", process.stderr.read().decode() if process.stderr else line
    return process


def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    """A worker committing rounds in a loop is SIGKILLed at three random moments, resuming each time.

    After every kill, on disk: (R1) the checkpoint is whole (state and tensors of its round c) and the
    log's complete lines are rounds 1..m, m in {c-1, c}, equal to the reports written. After the last
    resume the run finishes and the log holds rounds 1..N once each, byte-identical to an uninterrupted run.
    """
    # Arrange
    delays_s = np.random.default_rng(2024).uniform(0.05, 0.6, size=3)  # where in a save it lands is still chance
    run_dir = tmp_path / "run"
    committed = []
    # Act
    for delay_s in delays_s:
        process = _run_worker(run_dir, last_round=100_000)
        time.sleep(delay_s)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # Assert (R1) right after the kill, before any repair
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode() if process.stderr else ""
        state, tensors = load_checkpoint(run_dir, **IDENTITY)
        c = state.global_round
        reports = read_reports(run_dir / REPORTS_NAME)
        assert state == make_state(c)
        assert_tensors_equal(tensors, make_tensors(c))
        assert len(reports) in (c - 1, c)
        assert reports == [make_report(r) for r in range(1, len(reports) + 1)]
        committed.append(c)
    final_round = committed[-1] + 3
    process = _run_worker(run_dir, last_round=final_round)
    process.wait(timeout=60)
    # Assert (R2) after the final resume and a clean finish
    assert process.returncode == 0
    assert committed == sorted(committed) and committed[0] >= 1
    reference = tmp_path / "reference.jsonl"
    write_log(reference, range(1, final_round + 1))
    assert (run_dir / REPORTS_NAME).read_bytes() == reference.read_bytes()
    assert len(list(run_dir.glob("checkpoint-*.safetensors"))) == 1
    assert not list(run_dir.glob(".*.tmp"))


def test_docstring_examples_run():
    """The doctests of the generator-state helpers checkpoint re-exports (they live in runtime.run_state) pass."""
    # Act
    result = doctest.testmod(run_state, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    # Assert
    assert result.failed == 0 and result.attempted > 0
