"""Files a command reads back on resume (what-if rows, experiment results) refuse a value changed after the write."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfedlora.planner.errors import HierFedLoraError, InvalidInputError
from hierfedlora.planner.io import write_json
from hierfedlora.planner.sealed import SEAL_KEY, read_sealed_json, write_sealed_json
from hierfedlora.planner.types import ConvergenceParams

PARAMS = ConvergenceParams(reference_rounds=41.5, skew_sensitivity=0.25)


def test_a_changed_number_is_refused_naming_the_seal(tmp_path):
    """41.5 -> 41.6 keeps the JSON valid and the field rule met; the seal catches it."""
    # Arrange
    path = tmp_path / "row.json"
    write_sealed_json(path, PARAMS)
    path.write_text(path.read_text().replace("41.5", "41.6"))
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_sealed_json(ConvergenceParams, path)
    # Assert
    assert [issue.path for issue in info.value.issues] == [SEAL_KEY]
    assert str(info.value).startswith(f"{tmp_path.name}/row.json: content_sha256 must be the sha256 of the file's")


def test_a_file_written_before_sealing_is_read_unchecked_and_layout_does_not_matter(tmp_path):
    """An unsealed file (older folders) reads as before; a sealed one re-indented still matches its seal."""
    # Arrange
    old, sealed = tmp_path / "old.json", tmp_path / "sealed.json"
    write_json(old, PARAMS)
    write_sealed_json(sealed, PARAMS)
    sealed.write_text(json.dumps(dict(reversed(json.loads(sealed.read_text()).items()))))
    # Act
    read_back = (read_sealed_json(ConvergenceParams, old), read_sealed_json(ConvergenceParams, sealed))
    # Assert
    assert read_back == (PARAMS, PARAMS)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_a_flipped_byte_fails_or_changes_nothing(tmp_path_factory, data):
    """Property: a sealed file with one byte changed either fails with the package's error or reads as written."""
    # Arrange
    path = tmp_path_factory.mktemp("seal") / "p.json"
    write_sealed_json(path, PARAMS)
    raw = bytearray(path.read_bytes())
    at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[at] = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != raw[at]))
    path.write_bytes(bytes(raw))
    # Act
    try:
        read_back = read_sealed_json(ConvergenceParams, path)
    except HierFedLoraError:
        return
    # Assert
    assert read_back == PARAMS


def test_every_contract_reader_checks_a_seal(tmp_path):
    """A sealed file (an experiment's cost_model.json, say) reads with plain read_json, which checks the seal too."""
    # Arrange
    from hierfedlora.planner.io import read_json

    path = tmp_path / "c.json"
    write_sealed_json(path, PARAMS)
    plain = read_json(ConvergenceParams, path)
    path.write_text(path.read_text().replace("0.25", "0.26"))
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_json(ConvergenceParams, path)
    # Assert
    assert plain == PARAMS
    assert str(info.value).startswith("c.json: content_sha256 must be the sha256 of the file's content")
