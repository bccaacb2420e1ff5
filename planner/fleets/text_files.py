"""Text files the fleet readers share: UTF-8 text with its digest, and CSV rows with their line numbers.

:func:`read_text` refuses a missing, unreadable or non-UTF-8 file as invalid input naming the file (a UTF-8 byte
order mark is skipped). :func:`csv_rows` reads a CSV text's header and rows, each with the line it ends on; a row
the ``csv`` module cannot parse becomes an issue naming its line, and fields may be as long as the file (the
module's default cap, 131,072 characters, refused long texts that JSON Lines files take).
:func:`csv_row_shape_issues` names rows with more or fewer values than the header, or the header repeated.

Examples
--------
>>> header, rows, issues = csv_rows("text,label\\na cat,pet\\n\\n\\"two\\nlines\\",pet\\n", "toy.csv")
>>> header, [(line, row["text"]) for line, row in rows], issues
(['text', 'label'], [(2, 'a cat'), (5, 'two\\nlines')], [])
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError, Issue

__all__ = ["csv_row_shape_issues", "csv_rows", "missing_column", "read_text"]


def read_text(path: str | os.PathLike[str], encoding: str = "utf-8-sig", hint: str = "") -> tuple[str, str]:
    """The file's text and the SHA-256 of its bytes.

    Raises
    ------
    InvalidInputError
        If the file is missing, unreadable (a folder included) or not UTF-8 (the offset of the first bad byte).
    """
    file = Path(path)
    try:
        data = file.read_bytes()
        return data.decode(encoding), hashlib.sha256(data).hexdigest()
    except FileNotFoundError:
        issue = Issue("path", "an existing file", str(file), hint)
    except OSError as exc:
        issue = Issue("path", "a readable file", f"{file}: {exc.strerror}", hint)
    except UnicodeDecodeError as exc:
        issue = Issue("path", "a UTF-8 text file", f"undecodable byte at offset {exc.start}")
    raise InvalidInputError([issue], file.name)


@contextlib.contextmanager
def _field_limit(size: int) -> Iterator[None]:
    """Let ``csv`` read fields of up to ``size`` characters; the module-wide limit is restored afterwards."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, size + 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def csv_rows(text: str, source: str) -> tuple[list[str], list[tuple[int, dict[str | None, object]]], list[Issue]]:
    """A CSV text's header, its rows as ``(line, row)`` (``csv.DictReader`` rows; ``line`` is the row's last
    line) and the issue of a row that does not parse (reading stops there).

    Raises
    ------
    InvalidInputError
        If the header line does not parse (``line 1``).
    """
    rows: list[tuple[int, dict[str | None, object]]] = []
    issues: list[Issue] = []
    with _field_limit(len(text)):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = list(reader.fieldnames or [])
        except csv.Error as exc:
            raise InvalidInputError([Issue("line 1", "a well-formed CSV header", str(exc))], source) from None
        try:
            for row in reader:
                rows.append((reader.line_num, row))
        except csv.Error as exc:  # line_num counts the lines read before the failing one
            issues.append(Issue(f"line {reader.line_num + 1}", "a well-formed CSV row", str(exc)))
    return header, rows, issues


def csv_row_shape_issues(row: dict[str | None, object], header: Sequence[str], line: int) -> list[Issue]:
    """A ``csv.DictReader`` row's shape problems: more or fewer values than the header has columns, or
    the header itself repeated as data (two files pasted together). Nothing is dropped silently.

    >>> [str(i) for i in csv_row_shape_issues({"a": "1", "b": "2", None: ["3"]}, ["a", "b"], 4)]
    ['line 4 must be 2 values (one per header column); got 3 values']
    """
    expected = f"{len(header)} values (one per header column)"
    extra = row.get(None)
    if isinstance(extra, list):
        return [Issue(f"line {line}", expected, _Count(len(header) + len(extra)))]
    given = sum(1 for name in header if row.get(name) is not None)
    if given < len(header):
        return [Issue(f"line {line}", expected, _Count(given))]
    if [row.get(name) for name in header] == list(header):
        return [Issue(f"line {line}", "a data row", "the header repeated", "remove the repeated header line")]
    return []


class _Count(int):
    def __repr__(self) -> str:
        return f"{int(self)} values"


def missing_column(field: str, header: Sequence[str]) -> Issue:
    """The issue of a header without the column ``field``, with a "did you mean" hint."""
    close = difflib.get_close_matches(field, list(header), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "set text_field / label_field to the file's column names"
    return Issue("line 1", f"a header with the column {field!r}", list(header), hint)
