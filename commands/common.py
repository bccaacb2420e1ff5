"""Small helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hierfedlora.planner.errors import InvalidInputError, Issue

__all__ = ["int_list", "read_json_object", "setting"]


def int_list(text: str) -> tuple[int, ...]:
    """Parse ``"1,2,4"`` into ``(1, 2, 4)`` for argparse."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer; got {text!r}")
    return values


def setting(text: str) -> tuple[str, Any]:
    """Parse ``FIELD=VALUE`` for argparse; the value is JSON when it parses (``3``, ``null``, ``[1, 2]``),
    a string otherwise."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE like local_steps=2; got {text!r}")
    field, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return field.strip(), value


def read_json_object(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; every failure is an InvalidInputError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError([Issue("path", "an existing file", str(path))], path.name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError([Issue("path", "a readable UTF-8 file", str(exc))], path.name) from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError([Issue(f"line {exc.lineno}", "valid JSON", exc.msg)], path.name) from None
    if not isinstance(data, dict):
        raise InvalidInputError([Issue("(top level)", "a JSON object", type(data).__name__)], path.name)
    return data
