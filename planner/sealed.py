"""JSON files a command writes for itself and reads back when it resumes, sealed with the sha256 of their content.

A what-if study's finished rows (``rows/<key>.json``) and an experiment's finished runs (``result.json``) are
reused, not recomputed, when the command runs again. A value changed in such a file after it was written (a
flipped digit keeps the JSON valid and every field rule met) would flow into the tables as if computed. A sealed
file is the object's JSON with one more top-level key, :data:`SEAL_KEY`: the sha256 of the object's canonical JSON
(:func:`hierfedlora.planner.io.sha256_of`, so layout and key order do not matter). :func:`read_sealed_json`
checks it, as every reader of contract files (:func:`hierfedlora.planner.io.read_json`) does; a file without it
(written before sealing) is read as before.

Examples
--------
>>> import pathlib, tempfile
>>> from hierfedlora.planner.types import ConvergenceParams
>>> path = pathlib.Path(tempfile.mkdtemp()) / "c.json"
>>> write_sealed_json(path, ConvergenceParams())
>>> read_sealed_json(ConvergenceParams, path) == ConvergenceParams()
True
>>> _ = path.write_text(path.read_text().replace('58.3', '58.4'))
>>> read_sealed_json(ConvergenceParams, path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: .../c.json: content_sha256 must be the sha256 of the file's content...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from hierfedlora.planner.io import SEAL_KEY, atomic_write_text, from_json, read_text, sha256_of, to_dict

__all__ = ["SEAL_KEY", "read_sealed_json", "write_sealed_json"]

T = TypeVar("T")


def write_sealed_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write a contract object as indented JSON with its :data:`SEAL_KEY`, atomically."""
    data = to_dict(obj)
    data[SEAL_KEY] = sha256_of(obj)
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def read_sealed_json(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Read a file :func:`write_sealed_json` wrote and check its seal (a file without one is read unchecked).

    :func:`hierfedlora.planner.io.read_json` checks a seal too, so a sealed file reads anywhere a plain one does;
    this names the file with its folder (``rows/<key>.json``, ``<method>/result.json``: which of many).

    Raises
    ------
    InvalidInputError
        What :func:`hierfedlora.planner.io.read_json` raises, or a seal that is not the sha256 of the content
        read (``content_sha256``: the file is corrupt; deleting it has the command recompute it).
    StorageError
        The file exists but cannot be read.
    """
    return from_json(cls, read_text(path), source="/".join(Path(path).parts[-2:]))
