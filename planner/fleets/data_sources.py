"""Every data set an experiment can name, read by one function, and what a report says about it.

:func:`read_data` takes what a preset's ``data`` field or ``hierfedlora fleet --data`` holds:

- ``"wordnet"``: WordNet 3.0 noun glosses in 26 supersenses (:func:`~hierfedlora.planner.fleets.datasets.read_wordnet`);
- ``"janeausten"``: the paragraphs of Jane Austen's six novels, labelled by novel (:func:`read_janeausten`);
- a ``.csv`` or ``.jsonl`` file of (text, label) rows;
- a folder of such files, read in name order and joined (:func:`read_folder`).

:func:`describe_data` gives a :class:`DataSummary` (classes, sizes, majority share, chance level),
which experiment reports print instead of assuming a data set.

Examples
--------
>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "a.csv").write_text("text,label\\na cat,pet\\na fig,food\\n")
>>> _ = (folder / "b.jsonl").write_text('{"text": "a dog", "label": "pet"}\\n')
>>> data = read_data(str(folder))
>>> data.spec.kind, data.texts, data.class_names
('folder', ('a cat', 'a fig', 'a dog'), ('food', 'pet'))
>>> summary = describe_data(data)
>>> summary.num_classes, round(summary.majority_share, 3), summary.chance
(2, 0.667, 0.5)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets import datasets
from hierfedlora.planner.types import DatasetSpec

__all__ = [
    "JANEAUSTEN_DATA_PATH",
    "JANEAUSTEN_NOVELS",
    "NAMED_DATA",
    "DataSummary",
    "describe_data",
    "read_data",
    "read_folder",
    "read_janeausten",
]

log = logging.getLogger(__name__)

JANEAUSTEN_DATA_PATH = "/usr/lib/R/site-library/janeaustenr/data/Rdata"
"""The lazy-load data base (``.rdx`` index, ``.rdb`` data) Debian's ``r-cran-janeaustenr`` installs."""

JANEAUSTEN_NOVELS: dict[str, str] = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}
"""The package's six data sets (one character vector of lines per novel) and the class names used."""

_MIN_PARAGRAPH_WORDS = 5  # drops titles, "CHAPTER I" and "VOLUME II" lines: headings, not the novel's prose

NAMED_DATA: dict[str, str] = {
    "wordnet": "WordNet 3.0 noun glosses labelled by their 26 lexicographer files (supersenses); Debian "
    "`wordnet-base`, WordNet 3.0 licence (Princeton, BSD-like)",
    "janeausten": "paragraphs of Jane Austen's six completed novels (of at least 5 words), labelled by novel; "
    "Debian `r-cran-janeaustenr` (R package janeaustenr 1.0.0, MIT licence; the texts are public domain, "
    "from Project Gutenberg)",
}
"""The data sets known by name, with their source and licence (what reports print)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DataSummary:
    """What a report says about a data set: where it is from, its classes and sizes, its trivial baselines.

    ``majority_share`` is the largest class's share of the rows (the accuracy of always answering it);
    ``chance`` is ``1 / num_classes`` (a uniform guess).
    """

    name: str
    description: str
    path: str
    num_samples: int
    num_classes: int
    class_sizes: tuple[int, ...]
    majority_class: str
    majority_share: float
    chance: float

    def sentence(self) -> str:
        """One line for a report."""
        return (
            f"{self.name}: {self.description}; {self.num_samples:,} rows in {self.num_classes} classes "
            f"({min(self.class_sizes):,} to {max(self.class_sizes):,} rows a class) from `{self.path}`; "
            f"majority class `{self.majority_class}` {self.majority_share:.1%}, chance {self.chance:.1%}"
        )


def describe_data(data: datasets.LabelledTexts, name: str | None = None) -> DataSummary:
    """The :class:`DataSummary` of ``data`` (``name`` defaults to its kind, or the file's name)."""
    counts = Counter(data.labels)
    sizes = tuple(counts.get(i, 0) for i in range(data.num_classes))
    top = max(range(data.num_classes), key=lambda i: (sizes[i], -i))
    kind = data.spec.kind
    label = name or (kind if kind in NAMED_DATA else Path(data.spec.path).name)
    description = NAMED_DATA.get(label, f"labelled text from a {kind} source")
    return DataSummary(
        name=label,
        description=description,
        path=data.spec.path,
        num_samples=data.num_samples,
        num_classes=data.num_classes,
        class_sizes=sizes,
        majority_class=data.class_names[top],
        majority_share=sizes[top] / max(data.num_samples, 1),
        chance=1.0 / data.num_classes,
    )


def read_janeausten(path: str | os.PathLike[str] = JANEAUSTEN_DATA_PATH) -> datasets.LabelledTexts:
    """Jane Austen's six novels as paragraphs labelled by novel (6 classes, 9,752 rows).

    A paragraph is a run of non-blank lines of the package's text, joined by spaces; paragraphs of
    fewer than 5 words (titles, chapter and volume headings) are left out. Classes are the novels in
    :data:`JANEAUSTEN_NOVELS` order (alphabetical by the package's names).

    Parameters
    ----------
    path : str or path-like
        The lazy-load data base without its suffix (``.../janeaustenr/data/Rdata``); Debian's
        ``r-cran-janeaustenr`` installs it at :data:`JANEAUSTEN_DATA_PATH`.

    Raises
    ------
    InvalidInputError
        If the package's files are missing (hint: install ``r-cran-janeaustenr``) or hold no novel.
    """
    from hierfedlora.planner.fleets.r_lazyload import read_lazyload_index, read_lazyload_object

    base = Path(path)
    if not Path(f"{base}.rdx").is_file():
        hint = "apt-get install r-cran-janeaustenr"
        raise InvalidInputError([Issue("path", "an R lazy-load data base (.rdx and .rdb)", str(base), hint)])
    index = read_lazyload_index(base)
    missing = [name for name in JANEAUSTEN_NOVELS if name not in index]
    if missing:
        raise InvalidInputError([Issue("variables", f"the novels {list(JANEAUSTEN_NOVELS)}", sorted(index))])
    texts: list[str] = []
    labels: list[int] = []
    for position, name in enumerate(JANEAUSTEN_NOVELS):
        lines = read_lazyload_object(base, index[name])
        if not isinstance(lines, list):
            raise InvalidInputError([Issue(name, "a character vector of lines", type(lines).__name__)])
        for paragraph in _paragraphs(lines):
            texts.append(paragraph)
            labels.append(position)
    spec = DatasetSpec(
        kind="janeausten", path=str(base), num_samples=len(texts), sha256=datasets.file_sha256(f"{base}.rdb")
    )
    log.info("read %d Jane Austen paragraphs from %s", len(texts), base)
    return datasets.LabelledTexts(
        texts=tuple(texts), labels=tuple(labels), class_names=tuple(JANEAUSTEN_NOVELS.values()), spec=spec
    )


def _paragraphs(lines: list[object]) -> list[str]:
    found, current = [], []
    for line in [*lines, ""]:
        if isinstance(line, str) and line.strip():
            current.append(line.strip())
        elif current:
            paragraph = " ".join(current)
            if len(paragraph.split()) >= _MIN_PARAGRAPH_WORDS:
                found.append(paragraph)
            current = []
    return found


def read_folder(
    path: str | os.PathLike[str], text_field: str = "text", label_field: str = "label"
) -> datasets.LabelledTexts:
    """Every ``.csv`` and ``.jsonl`` file of a folder (not its subfolders), in name order, as one data set.

    Rows keep file order; class positions follow the sorted distinct labels of all files together
    (:mod:`hierfedlora.planner.fleets.datasets`' rule). The spec's ``sha256`` digests the files' names and
    digests, so a changed, added or removed file is noticed when the runtime reads the folder again.

    Raises
    ------
    InvalidInputError
        If the folder is missing or holds no such file, or any file is invalid (its issues, named by file).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidInputError([Issue("path", "an existing folder of .csv/.jsonl files", str(folder))])
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in (".csv", ".jsonl"))
    if not files:
        raise InvalidInputError([Issue("path", "a folder holding .csv or .jsonl files", f"none in {folder}")])
    parts = [_read_file(f, text_field, label_field) for f in files]
    raw = [parts[i].class_names[label] for i in range(len(parts)) for label in parts[i].labels]
    labels, class_names = datasets.encode_labels(raw)
    digest = hashlib.sha256("".join(f"{f.name}\0{p.spec.sha256}\n" for f, p in zip(files, parts, strict=True)).encode())
    spec = DatasetSpec(
        kind="folder",
        path=str(folder),
        text_field=text_field,
        label_field=label_field,
        num_samples=len(raw),
        sha256=digest.hexdigest(),
    )
    texts = tuple(text for part in parts for text in part.texts)
    return datasets.LabelledTexts(texts=texts, labels=labels, class_names=class_names, spec=spec)


def _read_file(file: Path, text_field: str, label_field: str) -> datasets.LabelledTexts:
    reader = datasets.read_csv if file.suffix.lower() == ".csv" else datasets.read_jsonl
    return reader(file, text_field=text_field, label_field=label_field)


def read_data(data: str, text_field: str = "text", label_field: str = "label") -> datasets.LabelledTexts:
    """The data set ``data`` names: ``wordnet``, ``janeausten``, a .csv/.jsonl file or a folder of them.

    Raises
    ------
    InvalidInputError
        If ``data`` is none of these (naming the choices), reading it fails, or its label column holds one
        label only.
    """
    if data == "wordnet":
        return datasets.read_wordnet()
    if data == "janeausten":
        return read_janeausten()
    path = Path(data)
    if path.is_dir():
        texts = read_folder(path, text_field, label_field)
    elif path.suffix.lower() in (".csv", ".jsonl"):
        texts = _read_file(path, text_field, label_field)
    else:
        expected = f"one of {sorted(NAMED_DATA)}, a .csv or .jsonl file, or a folder of them"
        raise InvalidInputError([Issue("data", expected, data)])
    if texts.num_classes < 2:  # the runtime's classifier needs two; refused here, before a fleet or plan is made
        expected = "a label column with at least 2 distinct labels (a classifier needs two classes)"
        raise InvalidInputError([Issue(label_field, expected, f"1 label, {texts.class_names[0]!r}")], path.name)
    return texts
