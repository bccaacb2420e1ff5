"""Small helpers shared by the command modules."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.io import parse_json, read_text

__all__ = ["add_problem_settings", "int_list", "problem_options", "read_json_object", "setting"]


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
    """Parse ``FIELD=VALUE`` for argparse; the value is strict JSON when it parses (``3``, ``null``,
    ``[1, 2]``; not ``NaN`` or nesting past the readers' bound), a string otherwise."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE like local_steps=2; got {text!r}")
    field, raw = text.split("=", 1)
    try:
        value = parse_json(raw)
    except InvalidInputError:
        value = raw
    return field.strip(), value


def read_json_object(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; every failure is an InvalidInputError naming the file (or a
    StorageError when the file cannot be read at all)."""
    data = parse_json(read_text(path), source=path.name)
    if not isinstance(data, dict):
        raise InvalidInputError([Issue("(top level)", "a JSON object", type(data).__name__)], path.name)
    return data


def add_problem_settings(
    parser: argparse.ArgumentParser, *, example: str, fields: str = "any PlanningProblem field"
) -> None:
    """Add ``--set FIELD=VALUE`` (repeatable) and ``--convergence FILE``, shared by ``plan`` and ``whatif``."""
    parser.add_argument(
        "--set",
        dest="settings",
        type=setting,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"{fields}, a JSON value; dots reach inside (e.g. {example}); wins over the flags and --convergence",
    )
    parser.add_argument(
        "--convergence", type=Path, default=None, help="ConvergenceParams JSON (e.g. from 'hierfedlora calibrate')"
    )


def problem_options(
    base: dict[str, Any],
    convergence: Path | None,
    settings: list[tuple[str, Any]],
    *,
    convergence_skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """PlanningProblem JSON data: ``base`` (a ``--problem`` file's), then the ``--convergence`` file's fields
    but ``convergence_skip`` (``whatif``: the target is an axis of the study), then ``settings`` (flags, then
    ``--set``; later ones win)."""
    from hierfedlora.planner.io import with_settings

    options = dict(base)
    if convergence is not None:
        given = options.get("convergence") or {}
        if not isinstance(given, dict):  # the --convergence file's fields go into it: it must be an object
            raise InvalidInputError([Issue("convergence", "an object of ConvergenceParams fields", given)], "problem")
        read = {k: v for k, v in read_json_object(convergence).items() if k not in convergence_skip}
        options["convergence"] = {**given, **read}
    return with_settings(options, settings)
