"""Readers for WordNet, CSV and JSONL data report every bad row; the stratified split is exact and seeded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleets.datasets import (
    MAX_ROW_ISSUES,
    WORDNET_NOUN_PATH,
    file_sha256,
    read_csv,
    read_dataset,
    read_jsonl,
    read_wordnet,
    train_test_split,
)

needs_wordnet = pytest.mark.skipif(not Path(WORDNET_NOUN_PATH).exists(), reason="wordnet-base is not installed")


def _paths(err: InvalidInputError) -> list[str]:
    return [issue.path for issue in err.issues]


@needs_wordnet
def test_wordnet_reads_every_noun_synset_in_26_classes():
    """All 82,115 WordNet 3.0 noun synsets come back, labelled by their 26 lexicographer files."""
    # Act
    data = read_wordnet()
    # Assert
    assert data.num_samples == 82_115
    assert data.num_classes == 26
    assert (data.class_names[0], data.class_names[5], data.class_names[-1]) == ("noun.Tops", "noun.body", "noun.time")
    assert data.texts[0].startswith("that which is perceived or known or inferred")
    assert data.labels[0] == 0
    assert np.bincount(data.labels)[data.class_names.index("noun.artifact")] == 11_587
    assert data.spec.kind == "wordnet"
    assert data.spec.sha256 == file_sha256(WORDNET_NOUN_PATH)


def test_missing_wordnet_names_the_file_and_the_package(tmp_path):
    """A missing data.noun is one issue naming the path, with the apt-get hint."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_wordnet(tmp_path / "data.noun")
    # Assert
    issue = info.value.issues[0]
    assert (issue.path, issue.expected, issue.got) == ("path", "an existing file", str(tmp_path / "data.noun"))
    assert "apt-get install wordnet-base" in str(info.value)


def test_wordnet_reports_malformed_synset_lines(tmp_path):
    """Licence lines are skipped; a line without a gloss or with a verb lexfile is reported by line number."""
    # Arrange
    path = tmp_path / "data.noun"
    path.write_text(
        "  1 licence text\n"
        "00001740 03 n 01 entity 0 000 | that which is perceived\n"
        "00001930 03 n 01 physical_entity 0 000\n"
        "00002137 31 n 01 abstraction 0 000 | a general concept\n"
    )
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_wordnet(path)
    # Assert
    assert _paths(info.value) == ["line 3", "line 4"]
    assert str(info.value).startswith("data.noun: line 3 must be a synset line")


def test_csv_labels_take_sorted_positions_whatever_the_row_order(tmp_path):
    """String labels are numbered in sorted order, so shuffled rows give the same class positions."""
    # Arrange
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("text,label,extra\ncat,pet,x\nfig,food,y\ndog,pet,z\n")
    second.write_text("label,text\npet,dog\nfood,fig\npet,cat\n")
    # Act
    a, b = read_csv(first), read_csv(second)
    # Assert
    assert a.class_names == b.class_names == ("food", "pet")
    assert dict(zip(a.texts, a.labels, strict=True)) == dict(zip(b.texts, b.labels, strict=True))
    assert (a.spec.kind, a.spec.num_samples, a.spec.sha256) == (
        "csv",
        3,
        hashlib.sha256(first.read_bytes()).hexdigest(),
    )


def test_integer_labels_sort_by_value_in_csv_and_jsonl(tmp_path):
    """Digit strings (CSV) and JSON integers sort numerically: 9 comes before 10."""
    # Arrange
    csv_path, jsonl_path = tmp_path / "d.csv", tmp_path / "d.jsonl"
    csv_path.write_text("text,label\nx,10\ny,9\nz,2\n")
    jsonl_path.write_text('{"text": "x", "label": 10}\n\n{"text": "y", "label": "9"}\n{"text": "z", "label": 2}\n')
    # Act
    from_csv, from_jsonl = read_csv(csv_path), read_jsonl(jsonl_path)
    # Assert
    assert from_csv.class_names == from_jsonl.class_names == ("2", "9", "10")
    assert from_csv.labels == from_jsonl.labels == (2, 1, 0)


def test_csv_reports_every_bad_row_with_its_line(tmp_path):
    """An empty text and a missing label are both reported, each at line N.<field>."""
    # Arrange
    path = tmp_path / "bad.csv"
    path.write_text('text,label\nok,a\n"  ",b\nno label\n')
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_csv(path)
    # Assert
    assert _paths(info.value) == ["line 3.text", "line 4.label"]
    assert str(info.value).splitlines()[0] == "bad.csv: line 3.text must be a non-empty string; got '  '"


def test_csv_without_the_text_column_suggests_the_close_name(tmp_path):
    """A header lacking the text column is one issue with a did-you-mean hint."""
    # Arrange
    path = tmp_path / "h.csv"
    path.write_text("txt,label\nx,a\n")
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_csv(path)
    # Assert
    assert _paths(info.value) == ["line 1"]
    assert info.value.issues[0].hint == "did you mean 'txt'?"


def test_jsonl_reports_bad_json_non_objects_and_wrong_types(tmp_path):
    """Bad JSON, a list, a missing text, a float label and a bool label are each one issue."""
    # Arrange
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"text": "fine", "label": "a"}\n{"text": "cut\n[1, 2]\n{"label": "a"}\n'
        '{"text": "x", "label": 1.5}\n{"text": "y", "label": true}\n'
    )
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_jsonl(path)
    # Assert
    assert _paths(info.value) == ["line 2", "line 3", "line 4.text", "line 5.label", "line 6.label"]


def test_bad_rows_are_capped_and_counted(tmp_path):
    """Thirty bad rows show as the first twenty, the last saying ten more follow."""
    # Arrange
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": "", "label": 1}) + "\n" for _ in range(30)))
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_jsonl(path)
    # Assert
    assert len(info.value.issues) == MAX_ROW_ISSUES
    assert info.value.issues[-1].hint == "and 10 more after it"


@pytest.mark.parametrize(
    ("name", "content", "reader"), [("e.csv", "text,label\n", read_csv), ("e.jsonl", "\n", read_jsonl)]
)
def test_a_file_without_rows_is_an_error(tmp_path, name, content, reader):
    """A header-only CSV and a blank JSONL file are refused, not read as empty data sets."""
    # Arrange
    path = tmp_path / name
    path.write_text(content)
    # Act
    with pytest.raises(InvalidInputError) as info:
        reader(path)
    # Assert
    assert (info.value.issues[0].path, info.value.issues[0].got) == ("path", "no rows")


def test_read_dataset_rereads_the_file_and_refuses_a_changed_one(tmp_path):
    """The spec reads back the same rows; after an edit the digest and row count no longer match."""
    # Arrange
    path = tmp_path / "d.csv"
    path.write_text("text,label\nx,a\ny,b\n")
    spec = read_csv(path).spec
    # Act
    again = read_dataset(spec)
    path.write_text("text,label\nx,a\ny,b\nz,b\n")
    with pytest.raises(InvalidInputError) as info:
        read_dataset(spec)
    # Assert
    assert again.texts == ("x", "y") and again.spec == spec
    assert _paths(info.value) == ["sha256", "num_samples"]


def test_split_is_stratified_and_seeded():
    """Each class gives its share to the test part; the same seed gives the same split."""
    # Arrange
    labels = [0] * 50 + [1] * 30 + [2] * 20
    # Act
    train, test = train_test_split(labels, 0.1, seed=4)
    again = train_test_split(labels, 0.1, seed=4)
    other = train_test_split(labels, 0.1, seed=5)
    # Assert
    assert np.bincount(np.asarray(labels)[list(test)]).tolist() == [5, 3, 2]
    assert sorted(train + test) == list(range(100))
    assert again == (train, test) and other != (train, test)


def test_split_reports_every_bad_argument():
    """Empty labels, a fraction of 1 and a negative seed are three issues."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        train_test_split([], 1.0, seed=-1)
    # Assert
    assert _paths(info.value) == ["labels", "test_fraction", "seed"]


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=120),
    fraction=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32),
)
def test_split_covers_every_row_once_with_the_rounded_test_size(labels, fraction, seed):
    """Train and test partition the rows; the test part holds round(f*n) rows, each class within one of f*n_c."""
    # Act
    train, test = train_test_split(labels, fraction, seed)
    # Assert
    assert sorted(train + test) == list(range(len(labels)))
    assert len(test) == round(fraction * len(labels))
    counts, held = np.bincount(labels, minlength=5), np.bincount(np.asarray(labels, dtype=int)[list(test)], minlength=5)
    assert np.all(np.abs(held - fraction * counts) < 1 + 1e-9)
