"""A run folder changed after its commit is refused on resume: the state and the earlier report lines carry digests."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfedlora.planner.errors import HierFedLoraError, InvalidInputError
from hierfedlora.runtime.checkpoint import MANIFEST_NAME, REPORTS_NAME, ReportLog, load_checkpoint, save_checkpoint
from tests.runtime.test_checkpoint import IDENTITY, make_state, make_tensors


def _committed_folder(folder, rounds=3):
    """A run folder after ``rounds`` rounds, written as the engine writes it: checkpoint k records the digest of
    report lines 1..k-1, then report k is appended."""
    import dataclasses

    with ReportLog.open(folder / REPORTS_NAME) as log:
        for k in range(1, rounds + 1):
            state = dataclasses.replace(make_state(k), reports_sha256=log.sha256)
            save_checkpoint(folder, state, make_tensors(k))
            log.append(state.last_report)
    return state


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"sim_time_s": 4.5', '"sim_time_s": 4.6'),
        ('"seed": 3', '"seed": 4'),
        ('"eval_accuracy": 0.5', '"eval_accuracy": 0.6'),
    ],
)
def test_a_state_value_changed_after_the_commit_is_refused(tmp_path, old, new):
    """A changed digit that keeps checkpoint.json valid (clock, seed, the last report) no longer resumes silently
    into another run: the state's sha256 was written beside it."""
    # Arrange
    _committed_folder(tmp_path)
    manifest = tmp_path / MANIFEST_NAME
    text = manifest.read_text()
    assert old in text
    manifest.write_text(text.replace(old, new, 1))
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_checkpoint(tmp_path, **IDENTITY)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["state_sha256"]
    assert "the file is corrupt" in str(info.value)


def test_a_checkpoint_without_a_state_digest_still_loads(tmp_path):
    """Folders written before the digest existed resume as before."""
    # Arrange
    state = _committed_folder(tmp_path)
    manifest = tmp_path / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    del data["state_sha256"]
    manifest.write_text(json.dumps(data))
    # Act
    loaded, _ = load_checkpoint(tmp_path, **IDENTITY)
    # Assert
    assert loaded == state


def test_an_earlier_report_line_changed_after_the_commit_is_refused(tmp_path):
    """Round 1's line edited (still a valid report) after round 3 was committed: resume refuses the log instead of
    keeping a history the run never wrote; the untouched folder resumes."""
    # Arrange
    state = _committed_folder(tmp_path)
    path = tmp_path / REPORTS_NAME
    original = path.read_bytes()
    lines = original.split(b"\n")
    lines[0] = lines[0].replace(b'"eval_accuracy": 0.5', b'"eval_accuracy": 0.25', 1)
    path.write_bytes(b"\n".join(lines))
    # Act
    with pytest.raises(InvalidInputError) as info:
        ReportLog.open(path, resume_state=state)
    path.write_bytes(original)
    with ReportLog.open(path, resume_state=state) as log:
        last_round = log.last_round
    # Assert
    assert "rounds 1..2 as they were when round 3 was committed" in str(info.value)
    assert last_round == 3 and path.read_bytes() == original


def test_the_log_digest_covers_the_lines_written_and_kept():
    """ReportLog.sha256 is the sha256 of the log's bytes, after appends and after a resume's repair alike."""
    import tempfile
    from pathlib import Path

    # Arrange
    folder = Path(tempfile.mkdtemp())
    state = _committed_folder(folder)
    # Act
    with ReportLog.open(folder / REPORTS_NAME, resume_state=state) as log:
        digest = log.sha256
    # Assert
    assert digest == hashlib.sha256((folder / REPORTS_NAME).read_bytes()).hexdigest()


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_flipped_byte_in_the_manifest_fails_or_changes_nothing(tmp_path_factory, data):
    """Property: checkpoint.json with one byte changed either fails with the package's error or loads the very
    state that was saved (a changed space, say): never another state."""
    # Arrange
    folder = tmp_path_factory.mktemp("flip")
    state = _committed_folder(folder, rounds=2)
    manifest = folder / MANIFEST_NAME
    raw = bytearray(manifest.read_bytes())
    at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[at] = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != raw[at]))
    manifest.write_bytes(bytes(raw))
    # Act
    try:
        loaded, _ = load_checkpoint(folder, **IDENTITY)
    except HierFedLoraError:
        return
    # Assert
    assert loaded == state
