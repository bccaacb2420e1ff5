"""Named data sets, folders of files, what reports say about them, and the R lazy-load reader."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleets.data_sources import (
    JANEAUSTEN_DATA_PATH,
    JANEAUSTEN_NOVELS,
    describe_data,
    read_data,
    read_folder,
    read_janeausten,
)
from hierfedlora.planner.fleets.datasets import read_dataset
from hierfedlora.planner.fleets.r_lazyload import read_lazyload_index, read_lazyload_object, unserialize

needs_janeausten = pytest.mark.skipif(
    not Path(f"{JANEAUSTEN_DATA_PATH}.rdx").exists(), reason="r-cran-janeaustenr is not installed"
)


def _xdr_strings(*values: str | None, names: tuple[str, ...] = ()) -> bytes:
    """R's XDR serialization of a character vector (with a names attribute when ``names`` is given)."""
    flags = 16 | (1 << 9 if names else 0)
    body = struct.pack(">ii", flags, len(values))
    for value in values:
        body += struct.pack(">ii", 9, -1) if value is None else struct.pack(">ii", 9, len(value)) + value.encode()
    if names:  # pairlist cell with a tag: the symbol 'names', then the names vector, then the end
        body += struct.pack(">i", 2 | 1 << 10) + struct.pack(">i", 1) + struct.pack(">ii", 9, 5) + b"names"
        body += _xdr_strings(*names)[14:]
        body += struct.pack(">i", 254)
    return b"X\n" + struct.pack(">iii", 2, 0, 0) + body


def _write_lazyload(base: Path, objects: dict[str, bytes]) -> None:
    """A lazy-load data base as R writes one: zlib chunks with a size prefix, a gzip index."""
    data, entries = b"", {}
    for name, blob in objects.items():
        chunk = struct.pack(">i", len(blob)) + zlib.compress(blob)
        entries[name] = (len(data), len(chunk))
        data += chunk
    Path(f"{base}.rdb").write_bytes(data)
    # index: list(variables = list(name = c(offset, length), ...)) with names attributes
    index = struct.pack(">ii", 19 | 1 << 9, 1)
    index += struct.pack(">ii", 19 | 1 << 9, len(entries))
    for offset, length in entries.values():
        index += struct.pack(">iiii", 13, 2, offset, length)
    index += _names_attribute(tuple(entries)) + _names_attribute(("variables",))
    Path(f"{base}.rdx").write_bytes(gzip.compress(b"X\n" + struct.pack(">iii", 2, 0, 0) + index))


def _names_attribute(names: tuple[str, ...]) -> bytes:
    out = struct.pack(">i", 2 | 1 << 10)
    out += struct.pack(">i", 1) + struct.pack(">ii", 9, 5) + b"names" if names else b""
    out += struct.pack(">ii", 16, len(names))
    for name in names:
        out += struct.pack(">ii", 9, len(name)) + name.encode()
    return out + struct.pack(">i", 254)


def test_unserialize_reads_strings_missing_values_and_names():
    """A character vector comes back as a list (NA as None); a named one as a dict."""
    # Arrange
    plain = _xdr_strings("It is a truth", None, "")
    named = _xdr_strings("x", "y", names=("a", "b"))
    # Act / Assert
    assert unserialize(plain) == ["It is a truth", None, ""]
    assert unserialize(named) == {"a": "x", "b": "y"}


@pytest.mark.parametrize(
    ("blob", "path"),
    [
        (b"A\n" + bytes(12), "header"),  # ASCII format, not XDR
        (b"X\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">ii", 16, 3), "byte"),  # cut short
        (b"X\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">i", 3), "byte"),  # a closure: unsupported
        (b"X\n" + struct.pack(">iii", 9, 0, 0), "version"),
    ],
)
def test_unserialize_refuses_what_it_cannot_read(blob, path):
    """Wrong format, truncation, an unsupported type or version: invalid input naming where."""
    with pytest.raises(InvalidInputError) as caught:
        unserialize(blob, "x.rdb")
    assert caught.value.issues[0].path.startswith(path)


def test_lazyload_round_trip_and_a_janeausten_layout_read(tmp_path):
    """An index and data base written as R writes them read back; read_janeausten turns a package of
    that layout into paragraphs (headings and blank lines dropped) labelled by novel."""
    # Arrange
    base = tmp_path / "Rdata"
    lines = {
        name: _xdr_strings(title.upper(), "", "CHAPTER I", "", f"A first paragraph of {title},", "over two lines.", "")
        for name, title in JANEAUSTEN_NOVELS.items()
    }
    _write_lazyload(base, lines)
    # Act
    index = read_lazyload_index(base)
    emma = read_lazyload_object(base, index["emma"])
    data = read_janeausten(base)
    # Assert
    assert list(index) == list(JANEAUSTEN_NOVELS) and emma[0] == "EMMA"
    assert data.texts[0] == "A first paragraph of Emma, over two lines."
    assert data.num_samples == 6 and data.labels == (0, 1, 2, 3, 4, 5)
    assert read_dataset(data.spec).texts == data.texts


def test_janeausten_refuses_a_missing_package(tmp_path):
    """No package: invalid input with the apt-get hint."""
    with pytest.raises(InvalidInputError) as caught:
        read_janeausten(tmp_path / "Rdata")
    assert "r-cran-janeaustenr" in caught.value.issues[0].hint


@needs_janeausten
def test_janeausten_reads_six_novels_of_paragraphs():
    """The installed package: 9,752 paragraphs in 6 classes; Pride and Prejudice opens as it should."""
    # Act
    data = read_data("janeausten")
    summary = describe_data(data)
    # Assert
    assert data.class_names == tuple(JANEAUSTEN_NOVELS.values()) and data.num_samples == 9752
    first = data.labels.index(data.class_names.index("Pride and Prejudice"))
    assert data.texts[first].startswith("It is a truth universally acknowledged, that a single man")
    assert summary.class_sizes == (2269, 1763, 977, 988, 1996, 1759)
    assert summary.majority_class == "Emma" and round(summary.majority_share, 4) == 0.2327
    assert "MIT" in summary.description


def test_folder_joins_files_in_name_order_and_notices_a_change(tmp_path):
    """A folder's CSV and JSONL files are one data set; re-reading after a file changed is refused."""
    # Arrange
    (tmp_path / "b.jsonl").write_text('{"text": "a dog", "label": "pet"}\n{"text": "a plum", "label": "food"}\n')
    (tmp_path / "a.csv").write_text("text,label\na cat,pet\n")
    (tmp_path / "notes.txt").write_text("ignored")
    # Act
    data = read_folder(tmp_path)
    again = read_dataset(data.spec)
    (tmp_path / "a.csv").write_text("text,label\na cow,pet\n")
    # Assert
    assert data.texts == ("a cat", "a dog", "a plum") and data.class_names == ("food", "pet")
    assert data.labels == (1, 1, 0) and again.texts == data.texts
    with pytest.raises(InvalidInputError) as caught:
        read_dataset(data.spec)
    assert caught.value.issues[0].path == "sha256"


def test_read_data_names_its_choices_and_refuses_an_empty_folder(tmp_path):
    """An unknown name and a folder without data files are one-line input errors."""
    with pytest.raises(InvalidInputError) as unknown:
        read_data("imdb")
    with pytest.raises(InvalidInputError) as empty:
        read_data(str(tmp_path))
    assert unknown.value.issues[0].path == "data" and "janeausten" in unknown.value.issues[0].expected
    assert "none in" in str(empty.value.issues[0].got)
