"""Labelled text data without torch: WordNet noun glosses, CSV and JSONL files, and a stratified split.

A reader returns a :class:`LabelledTexts`: the texts, their class positions, the class names and a
:class:`DatasetSpec` (kind, path, size, SHA-256 of the file) that lets the runtime load exactly the
same rows later (:func:`read_dataset` checks the digest). Every bad row is reported at once, each
as an :class:`Issue` whose path is ``line N`` or ``line N.<field>`` (the first
:data:`MAX_ROW_ISSUES` are listed, the last of them saying how many more there are).

Label order. A CSV/JSONL label may be a string or an integer. Class positions follow the sorted
order of the distinct labels: by value when every label is an integer (a JSON integer or a string
of digits, as every CSV field is a string), else by string (code-point order). The order depends on
the set of labels only, never on row order (scikit-learn's ``LabelEncoder`` convention), so the
same file always gives the same positions. WordNet's classes are the 26 noun lexicographer files in
their file-number order (``noun.Tops`` = 03 is class 0, ``noun.time`` = 28 is class 25).

Examples
--------
>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "toy.csv").write_text("text,label\\na cat,pet\\na fig,food\\na dog,pet\\n")
>>> data = read_csv(folder / "toy.csv")
>>> data.class_names, data.labels
(('food', 'pet'), (1, 0, 1))
>>> train, test = train_test_split((0, 0, 0, 0, 1, 1, 1, 1), test_fraction=0.5, seed=0)
>>> len(test), sorted(set(train) | set(test)) == list(range(8))
(4, True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.text_files import csv_row_shape_issues, csv_rows, missing_column, read_text
from hierfedlora.planner.io import MAX_NUMBER_DIGITS, parse_json
from hierfedlora.planner.rules import is_number
from hierfedlora.planner.types import DatasetSpec

__all__ = [
    "MAX_ROW_ISSUES",
    "WORDNET_NOUN_CLASSES",
    "WORDNET_NOUN_PATH",
    "LabelledTexts",
    "encode_labels",
    "file_sha256",
    "csv_row_shape_issues",
    "read_csv",
    "read_dataset",
    "read_jsonl",
    "raise_capped",
    "read_wordnet",
    "train_test_split",
]

log = logging.getLogger(__name__)

WORDNET_NOUN_PATH = "/usr/share/wordnet/data.noun"
"""Where Debian's ``wordnet-base`` package installs WordNet 3.0's noun synsets."""

# WordNet's lexnames(5WN) list, files 03..28: the 26 noun supersenses, in file-number order.
WORDNET_NOUN_CLASSES: tuple[str, ...] = tuple(
    f"noun.{name}"
    for name in (
        "Tops act animal artifact attribute body cognition communication event feeling food group location "
        "motive object person phenomenon plant possession process quantity relation shape state substance time"
    ).split()
)
_FIRST_NOUN_LEXFILE = 3

MAX_ROW_ISSUES = 20
"""Bad rows listed in one error; the last listed one counts the rest (an 80k-row file, one screen)."""

# A label of at most this many digits counts as an integer (JSON numbers have the same cap); a longer run of
# digits is a string label, never converted (int() refuses strings past 4,300 digits).
_INTEGER = re.compile(rf"[+-]?\d{{1,{MAX_NUMBER_DIGITS}}}")
# JSON Lines are separated by \n (or \r\n, or a lone \r); str.splitlines would also split at U+2028, U+2029 and
# U+0085, which JSON strings may hold raw.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LabelledTexts:
    """Texts with class positions, the class names and where they came from.

    ``labels[i]`` is the position of row ``i``'s class in ``class_names``; ``spec`` names the file
    (with its SHA-256) and, once a fleet is made, the held-out rows.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    spec: DatasetSpec

    def __post_init__(self) -> None:
        issues = []
        if len(self.labels) != len(self.texts):
            issues.append(Issue("labels", f"one label per text ({len(self.texts)})", f"{len(self.labels)} labels"))
        if not self.class_names:
            issues.append(Issue("class_names", "a non-empty list of class names", self.class_names))
        elif self.labels and not (0 <= min(self.labels) and max(self.labels) < len(self.class_names)):
            expected = f"class positions in 0..{len(self.class_names) - 1}"
            issues.append(Issue("labels", expected, f"{min(self.labels)}..{max(self.labels)}"))
        if self.spec.num_samples != len(self.texts):
            issues.append(Issue("spec.num_samples", f"the number of texts ({len(self.texts)})", self.spec.num_samples))
        if issues:
            raise InvalidInputError(issues)

    @property
    def num_samples(self) -> int:
        """Rows in the data set."""
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB chunks.

    Raises
    ------
    InvalidInputError
        If the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidInputError([Issue("path", "a readable file", f"{path}: {exc.strerror}")]) from None
    return digest.hexdigest()


def raise_capped(issues: list[Issue], source: str) -> None:
    """Raise the first :data:`MAX_ROW_ISSUES` issues, if any, the last one counting those not shown."""
    if not issues:
        return
    shown = issues[:MAX_ROW_ISSUES]
    if len(issues) > MAX_ROW_ISSUES:
        last = shown[-1]
        more = f"and {len(issues) - MAX_ROW_ISSUES} more after it"
        shown[-1] = dataclasses.replace(last, hint=f"{last.hint}; {more}" if last.hint else more)
    raise InvalidInputError(shown, source)


def read_wordnet(path: str | os.PathLike[str] = WORDNET_NOUN_PATH) -> LabelledTexts:
    """WordNet 3.0 noun glosses labelled by their lexicographer file (26 noun supersenses).

    Each synset line of ``data.noun`` holds its offset, its two-digit lexicographer file number
    (03 ``noun.Tops`` .. 28 ``noun.time``) and, after ``| ``, its gloss; the licence header's lines
    start with two spaces and are skipped. WordNet 3.0 has 82,115 noun synsets.

    Parameters
    ----------
    path : str or path-like
        The ``data.noun`` file (Debian's ``wordnet-base`` installs it at :data:`WORDNET_NOUN_PATH`).

    Raises
    ------
    InvalidInputError
        If the file is missing or unreadable (hint: install ``wordnet-base``), or has malformed
        synset lines (each listed as ``line N``).
    """
    file = Path(path)
    text, sha256 = read_text(file, "utf-8", hint="apt-get install wordnet-base")
    texts: list[str] = []
    labels: list[int] = []
    issues: list[Issue] = []
    last = _FIRST_NOUN_LEXFILE + len(WORDNET_NOUN_CLASSES) - 1
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line or line.startswith("  "):  # the licence header
            continue
        head, bar, gloss = line.partition(" | ")
        fields = head.split(" ", 2)
        lexfile = fields[1] if len(fields) > 1 else ""
        if not bar or not lexfile.isdigit() or not _FIRST_NOUN_LEXFILE <= int(lexfile) <= last or not gloss.strip():
            expected = f"a synset line: offset, noun lexicographer file {_FIRST_NOUN_LEXFILE:02d}..{last}, '| gloss'"
            issues.append(Issue(f"line {line_no}", expected, line[:60]))
            continue
        texts.append(gloss.strip())
        labels.append(int(lexfile) - _FIRST_NOUN_LEXFILE)
    raise_capped(issues, file.name)
    if not texts:
        raise InvalidInputError([Issue("path", "a WordNet data.noun file with synset lines", "no synsets")], file.name)
    spec = DatasetSpec(kind="wordnet", path=str(file), num_samples=len(texts), sha256=sha256)
    log.info("read %d WordNet noun glosses in %d classes from %s", len(texts), len(WORDNET_NOUN_CLASSES), file)
    return LabelledTexts(texts=tuple(texts), labels=tuple(labels), class_names=WORDNET_NOUN_CLASSES, spec=spec)


def _check_row(row: dict[str, object], line_no: int, text_field: str, label_field: str) -> list[Issue]:
    """Issues with one row's text and label fields (paths ``line N.<field>``)."""
    issues = []
    for field, kinds, expected in (
        (text_field, str, "a non-empty string"),
        (label_field, str | int, "a non-empty string or an integer"),
    ):
        value = row.get(field)
        if value is None:
            issues.append(Issue(f"line {line_no}.{field}", "present", "missing"))
        elif isinstance(value, bool) or not isinstance(value, kinds) or (isinstance(value, str) and not value.strip()):
            issues.append(Issue(f"line {line_no}.{field}", expected, value))
        elif isinstance(value, str) and _LONE_SURROGATE.search(value):  # JSON's "\ud800": no tokenizer takes it
            issues.append(Issue(f"line {line_no}.{field}", f"{expected} of Unicode characters", "a lone surrogate"))
    return issues


def encode_labels(raw: Sequence[str | int]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Class positions in sorted label order (by value if every label is an integer) and the names."""
    words = [str(v).strip() for v in raw]
    numeric = all(_INTEGER.fullmatch(w) for w in words)
    keys = [int(w) if numeric else w for w in words]  # "07" and "7" are one class when labels are numbers
    distinct = sorted(set(keys))
    position = {key: i for i, key in enumerate(distinct)}
    return tuple(position[key] for key in keys), tuple(str(key) for key in distinct)


def _labelled(
    rows: list[tuple[str, str | int]], kind: str, file: Path, sha256: str, text_field: str, label_field: str
) -> LabelledTexts:
    if not rows:
        raise InvalidInputError([Issue("path", "a file with at least one row", "no rows")], file.name)
    labels, class_names = encode_labels([label for _, label in rows])
    fields = {"text_field": text_field, "label_field": label_field, "num_samples": len(rows), "sha256": sha256}
    spec = DatasetSpec(kind=kind, path=str(file), **fields)
    log.info("read %d rows in %d classes from %s", len(rows), len(class_names), file)
    return LabelledTexts(texts=tuple(t for t, _ in rows), labels=labels, class_names=class_names, spec=spec)


def read_csv(path: str | os.PathLike[str], text_field: str = "text", label_field: str = "label") -> LabelledTexts:
    """A CSV file with a header row naming ``text_field`` and ``label_field`` (other columns ignored).

    Raises
    ------
    InvalidInputError
        If the file is missing, not UTF-8, empty, lacks either column (with a "did you mean"), or
        has rows with a missing or empty text or label, more or fewer values than the header, or the
        header repeated; every bad row at once (``line N.text``, ``line N``).
    """
    file = Path(path)
    text, sha256 = read_text(file)
    header, records, issues = csv_rows(text, file.name)
    missing = [field for field in (text_field, label_field) if field not in header]
    if missing:
        raise InvalidInputError([missing_column(field, header) for field in missing], file.name)
    rows: list[tuple[str, str | int]] = []
    found: list[Issue] = []
    for line, row in records:
        bad = _check_row(row, line, text_field, label_field)  # a missing text or label by name
        bad = bad or csv_row_shape_issues(row, header, line)
        found += bad
        if not bad:
            rows.append((str(row[text_field]).strip(), str(row[label_field]).strip()))
    issues = found + issues  # a row that does not parse ends the file: its issue comes last
    raise_capped(issues, file.name)
    return _labelled(rows, "csv", file, sha256, text_field, label_field)


def read_jsonl(path: str | os.PathLike[str], text_field: str = "text", label_field: str = "label") -> LabelledTexts:
    """A JSON Lines file: one object per line with ``text_field`` and ``label_field`` (blank lines skipped).

    Raises
    ------
    InvalidInputError
        If the file is missing, not UTF-8 or empty, or has lines that are not JSON objects or
        whose text or label is missing, empty or of the wrong type; every bad line at once.
    """
    file = Path(path)
    text, sha256 = read_text(file)
    rows: list[tuple[str, str | int]] = []
    issues: list[Issue] = []
    for line_no, line in enumerate(_LINE_BREAK.split(text), start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, where=f"line {line_no}")
        except InvalidInputError as exc:
            issues += exc.issues
            continue
        if not isinstance(row, dict):
            issues.append(Issue(f"line {line_no}", "a JSON object", row))
            continue
        found = _check_row(row, line_no, text_field, label_field)
        issues += found
        if not found:
            rows.append((row[text_field].strip(), row[label_field]))
    raise_capped(issues, file.name)
    return _labelled(rows, "jsonl", file, sha256, text_field, label_field)


def read_dataset(spec: DatasetSpec) -> LabelledTexts:
    """Read the data set a :class:`DatasetSpec` names and check it is the same file.

    The result carries ``spec`` itself (with its held-out ``test_indices``).

    Raises
    ------
    InvalidInputError
        If reading fails, or the file's row count or SHA-256 (when recorded) differs from the spec.
    """
    from hierfedlora.planner.fleets import data_sources  # it builds on this module's readers

    read = {"csv": read_csv, "jsonl": read_jsonl, "folder": data_sources.read_folder}.get(spec.kind)
    if read is not None:
        data = read(spec.path, spec.text_field, spec.label_field)
    else:
        data = data_sources.read_janeausten(spec.path) if spec.kind == "janeausten" else read_wordnet(spec.path)
    hint, file = "the data file changed since the fleet was made; make the fleet again", Path(spec.path).name
    issues = []
    if spec.sha256 and data.spec.sha256 != spec.sha256:
        issues.append(
            Issue("sha256", f"the digest recorded, {spec.sha256[:12]}...", data.spec.sha256[:12] + "...", hint)
        )
    if data.num_samples != spec.num_samples:
        issues.append(Issue("num_samples", f"the rows in {file} ({data.num_samples})", spec.num_samples, hint))
    if issues:
        raise InvalidInputError(issues)
    return dataclasses.replace(data, spec=spec)


def train_test_split(
    labels: Sequence[int] | np.ndarray, test_fraction: float, seed: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stratified split of row positions into a training and a held-out (test) part.

    Each class gives ``test_fraction`` of its rows to the test part; the per-class counts are
    rounded by largest remainder so the test part holds ``round(test_fraction * n)`` rows in all.
    Within a class, rows are drawn by ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    labels : sequence of int
        Class position of every row.
    test_fraction : float
        Share of rows held out, in [0, 1); 0 keeps every row for training.
    seed : int
        Seed of the draw (>= 0).

    Returns
    -------
    train_indices, test_indices : tuple of int
        Sorted row positions; together they cover ``range(len(labels))`` exactly once.

    Raises
    ------
    InvalidInputError
        If ``labels`` is empty or not integers >= 0, ``test_fraction`` is outside [0, 1), or
        ``seed`` is not an integer >= 0.

    Examples
    --------
    >>> train_test_split((0, 0, 1, 1, 1, 1), test_fraction=0.5, seed=3)[1]  # one of class 0, two of class 1
    (1, 2, 5)
    """
    array = np.asarray(labels)
    issues = []
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        issues.append(Issue("labels", "a non-empty list of class positions (integers >= 0)", f"{array.size} values"))
    if not (is_number(test_fraction) and math.isfinite(test_fraction) and 0 <= test_fraction < 1):
        issues.append(Issue("test_fraction", "a number in [0, 1)", test_fraction))
    if isinstance(seed, bool) or not (isinstance(seed, int | np.integer) and seed >= 0):
        issues.append(Issue("seed", "an integer >= 0", seed))
    if issues:
        raise InvalidInputError(issues)
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(array.size)
    order = order[np.argsort(array[order], kind="stable")]  # grouped by class, random within a class
    counts = np.bincount(array)
    exact = counts * float(test_fraction)
    take = np.floor(exact).astype(np.int64)
    remainder = round(float(test_fraction) * array.size) - int(take.sum())
    if remainder > 0:  # largest remainder first; ties go to the lower class position
        by_remainder = np.lexsort((np.arange(counts.size), -(exact - take)))
        take[by_remainder[:remainder]] += 1
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    test = np.concatenate([order[s : s + t] for s, t in zip(starts, take, strict=True)]) if take.sum() else order[:0]
    is_test = np.zeros(array.size, dtype=bool)
    is_test[test] = True
    return tuple(np.flatnonzero(~is_test).tolist()), tuple(np.flatnonzero(is_test).tolist())
