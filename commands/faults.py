"""``--dropout``, ``--straggler-frac``, ``--deadline-quantile``, ``--poison-frac`` and ``--faults FILE`` for ``run``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_fault_arguments", "build_faults"]

_FLAGS = {  # flag -> FaultOptions field
    "dropout": "dropout",
    "straggler_frac": "straggler_frac",
    "straggler_factor": "straggler_factor",
    "deadline_quantile": "deadline_quantile",
    "poison_frac": "poison_frac",
}


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fault flags (each maps 1:1 onto a ``runtime.faults.FaultOptions`` field)."""
    group = parser.add_argument_group(
        "faults", "simulate an unreliable fleet (seeded by --seed); updates are screened whenever one is given"
    )
    group.add_argument("--faults", type=Path, default=None, help="JSON with FaultOptions fields (flags override it)")
    group.add_argument("--dropout", type=float, default=None, metavar="P", help="P(device offline for a round)")
    group.add_argument(
        "--straggler-frac", type=float, default=None, metavar="F", help="P(online device slowed for a round)"
    )
    group.add_argument(
        "--straggler-factor", type=float, default=None, metavar="X", help="a straggler's step-time factor (default 4)"
    )
    group.add_argument(
        "--deadline-quantile",
        type=float,
        default=None,
        metavar="Q",
        help="each intra-group round closes at this quantile of its devices' times; later devices are dropped",
    )
    group.add_argument(
        "--poison-frac", type=float, default=None, metavar="F", help="P(online device sends a poisoned update)"
    )
    group.add_argument(
        "--absent-rounds",
        type=int,
        default=1,
        metavar="N",
        help="with --replan-every: a device dropped in each of the last N rounds counts as gone (default 1)",
    )


def build_faults(args: argparse.Namespace) -> Any:
    """The run's ``FaultOptions`` from ``--faults`` and the flags, or ``None`` when none is given.

    Raises
    ------
    InvalidInputError
        A bad fault file or value, naming the field (``--dropout`` / ``faults.json: dropout``).
    """
    from hierfedlora.commands.common import read_json_object
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.planner.io import from_json
    from hierfedlora.runtime.faults import FaultOptions

    given = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    if args.faults is None and not given:
        return None
    fields: dict[str, Any] = {}
    if args.faults is not None:
        import json

        fields = read_json_object(args.faults)
        base = from_json(FaultOptions, json.dumps(fields), source=args.faults.name)
        fields = {name: getattr(base, name) for name in FaultOptions.__dataclass_fields__}
    try:
        return FaultOptions(**{**fields, **given})
    except InvalidInputError as err:
        flags = {field: "--" + flag.replace("_", "-") for flag, field in _FLAGS.items()}
        raise InvalidInputError(
            [Issue(flags[i.path], i.expected, i.got) if i.path in given else i for i in err.issues]
        ) from None
