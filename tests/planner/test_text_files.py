"""The data readers on other people's files: any text survives CSV and JSON Lines, long fields, odd labels."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleet import import_fedscale
from hierfedlora.planner.fleets.data_sources import read_data
from hierfedlora.planner.fleets.datasets import read_csv, read_jsonl

# Any character a UTF-8 file can hold (no lone surrogates), line and paragraph separators included.
TEXTS = st.lists(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip),
    min_size=1,
    max_size=8,
)


def _csv_text(texts: list[str], labels: list[str]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    writer.writerows(zip(texts, labels, strict=True))
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(texts=TEXTS)
@example(texts=["a\u2028b", "c\x85d\u2029e", 'say "hi", then\r\nleave'])
def test_any_text_written_by_csv_and_json_reads_back(tmp_path_factory, texts):
    """Whatever the text (quotes, commas, CR/LF, U+2028, U+0085, emoji), a file written by Python's csv or json
    modules reads back row for row: JSON Lines split at line ends only, not at every Unicode line break."""
    # Arrange
    folder = tmp_path_factory.mktemp("texts")
    labels = [f"c{i % 2}" for i in range(len(texts))]
    (folder / "d.csv").write_bytes(_csv_text(texts, labels).encode())
    lines = [json.dumps({"text": t, "label": y}, ensure_ascii=False) for t, y in zip(texts, labels, strict=True)]
    (folder / "d.jsonl").write_bytes("\n".join(lines).encode())
    # Act
    from_csv = read_csv(folder / "d.csv")
    from_jsonl = read_jsonl(folder / "d.jsonl")
    # Assert
    expected = tuple(t.strip() for t in texts)
    assert from_csv.texts == expected and from_jsonl.texts == expected
    assert from_csv.labels == from_jsonl.labels


def test_a_csv_text_longer_than_the_csv_modules_field_cap_is_read(tmp_path):
    """A 300,000-character text (csv's default cap is 131,072) reads as JSON Lines does; the cap is restored."""
    # Arrange
    long_text = "word " * 60_000
    path = tmp_path / "long.csv"
    path.write_text(_csv_text([long_text, "short"], ["a", "b"]))
    before = csv.field_size_limit()
    # Act
    data = read_csv(path)
    # Assert
    assert data.texts == (long_text.strip(), "short")
    assert csv.field_size_limit() == before


def test_digit_labels_longer_than_a_json_number_are_string_labels(tmp_path):
    """A 5,000-digit label was an internal error (int() refuses strings past 4,300 digits); now it is a label."""
    # Arrange
    path = tmp_path / "big.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{'9' * 5000}{i % 2}\n" for i in range(4)))
    # Act
    data = read_csv(path)
    # Assert
    assert data.class_names == ("9" * 5000 + "0", "9" * 5000 + "1") and data.labels == (0, 1, 0, 1)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_label_column_with_one_class_is_refused_when_read(tmp_path, suffix):
    """One class cannot train a classifier: read_data refuses it naming the column, before a fleet or plan."""
    # Arrange
    path = tmp_path / f"one{suffix}"
    rows = [{"text": f"t{i}", "kind": "A"} for i in range(6)]
    if suffix == ".csv":
        path.write_text("text,kind\n" + "".join(f"{r['text']},{r['kind']}\n" for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_data(str(path), label_field="kind")
    # Assert
    assert [issue.path for issue in info.value.issues] == ["kind"]
    assert str(info.value).startswith(f"one{suffix}: kind must be a label column with at least 2 distinct labels")


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_fedscale_trace_that_is_not_utf8_is_invalid_input(tmp_path, fleet_of_two, suffix):
    """A Latin-1 trace was an internal error (UnicodeDecodeError); now it names the file and the byte."""
    # Arrange
    path = tmp_path / f"capacity{suffix}"
    body = "client_id,computation,communication\n1,2\xe9,3\n" if suffix == ".csv" else '{"1": "caf\xe9"}'
    path.write_bytes(body.encode("latin-1"))
    # Act
    with pytest.raises(InvalidInputError) as info:
        import_fedscale(path, fleet_of_two, host_train_s_per_sample=0.01)
    # Assert
    assert str(info.value).startswith(f"capacity{suffix}: path must be a UTF-8 text file; got 'undecodable byte")


@pytest.fixture
def fleet_of_two():
    from hierfedlora.planner.fleet import make_fleet
    from hierfedlora.planner.fleets.datasets import LabelledTexts
    from hierfedlora.planner.types import DatasetSpec

    data = LabelledTexts(
        texts=("t",) * 8,
        labels=(0, 1) * 4,
        class_names=("a", "b"),
        spec=DatasetSpec(kind="csv", path="t.csv", num_samples=8),
    )
    return make_fleet(data, num_devices=2, partition="iid", test_fraction=0.25, seed=0)


def test_a_jsonl_text_with_a_lone_surrogate_is_refused_by_line(tmp_path):
    """JSON's "\\ud800" parses to a lone surrogate, which no tokenizer takes (the run was exit 70); the reader names
    the line and field."""
    # Arrange
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "a\\ud800b", "label": "b"}\n')
    # Act
    with pytest.raises(InvalidInputError) as info:
        read_jsonl(path)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["line 2.text"]
    assert "a lone surrogate" in str(info.value)
