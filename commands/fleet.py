"""``hierfedlora fleet``: partition a data set over simulated devices and write a Fleet JSON."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``fleet`` subcommand."""
    parser = commands.add_parser(
        "fleet",
        help="generate a fleet file from a data set and a partition",
        description="Partition a labelled text data set over simulated devices (IID, Dirichlet alpha, or k classes "
        "per device) and give each device a tier's speed, memory and bandwidth. Writes a Fleet JSON.",
    )
    parser.add_argument(
        "--data",
        default="wordnet",
        help="'wordnet' (WordNet noun glosses), 'janeausten' (Austen's novels), a .csv/.jsonl file or a folder of them",
    )
    parser.add_argument("--text-field", default="text", help="text column of a CSV/JSONL file (default text)")
    parser.add_argument("--label-field", default="label", help="label column of a CSV/JSONL file (default label)")
    parser.add_argument("--devices", type=int, default=80, help="number of devices (default 80)")
    parser.add_argument("--partition", choices=("iid", "dirichlet", "classes"), default="dirichlet")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default 0.5)")
    parser.add_argument("--classes-per-device", type=int, default=2, help="with --partition classes (default 2)")
    parser.add_argument("--tiers", default="paper", help="tier preset: paper, phones or mixed (default paper)")
    parser.add_argument("--network", default=None, help="override every device's link: 4g, 5g or wifi")
    parser.add_argument("--max-samples-per-device", type=int, default=None, help="subsample each device to this")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="held-out test share (default 0.1)")
    parser.add_argument(
        "--fedscale-capacity",
        type=Path,
        default=None,
        help="FedScale client_device_capacity trace (JSON or CSV, never a pickle); replaces tier speeds and links",
    )
    parser.add_argument("--fedscale-behaviour", type=Path, default=None, help="FedScale client_behave_trace (JSON/CSV)")
    parser.add_argument(
        "--cost-model",
        type=Path,
        default=None,
        help="with --fedscale-capacity: the cost model whose host step time converts ms/sample to compute_scale",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, partition and device draws")
    parser.add_argument("--out", required=True, type=Path, help="where to write the fleet JSON")
    parser.set_defaults(handler=handle)


def load_data(data: str, text_field: str, label_field: str):  # type: ignore[no-untyped-def]
    """Read a named data set, a CSV/JSONL file or a folder of them (``planner.fleets.data_sources.read_data``)."""
    from hierfedlora.planner.fleets.data_sources import read_data

    return read_data(data, text_field, label_field)


def _apply_fedscale(fleet, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Replace device speeds, links and availability with FedScale trace clients."""
    from hierfedlora.planner.costs import step_time_s
    from hierfedlora.planner.errors import InvalidInputError, Issue
    from hierfedlora.planner.fleet import import_fedscale
    from hierfedlora.planner.io import read_json
    from hierfedlora.planner.types import CostModel

    if args.cost_model is None:
        raise InvalidInputError(
            [Issue("--cost-model", "a cost model JSON when --fedscale-capacity is given", None)], "command line"
        )
    cost = read_json(CostModel, args.cost_model)
    per_sample_s = step_time_s(cost, compute_scale=1.0, depth=cost.num_layers, batch_size=cost.batch_size)
    return import_fedscale(
        args.fedscale_capacity,
        fleet,
        host_train_s_per_sample=per_sample_s / cost.batch_size,
        behaviour_path=args.fedscale_behaviour,
        seed=args.seed,
    )


def handle(args: argparse.Namespace) -> int:
    """Run ``fleet``."""
    from hierfedlora.planner.fleet import make_fleet, save_fleet

    data = load_data(args.data, args.text_field, args.label_field)
    fleet = make_fleet(
        data,
        num_devices=args.devices,
        partition=args.partition,
        alpha=args.alpha,
        classes_per_device=args.classes_per_device,
        tier_mix=args.tiers,
        network=args.network,
        test_fraction=args.test_fraction,
        max_samples_per_device=args.max_samples_per_device,
        seed=args.seed,
    )
    if args.fedscale_capacity is not None:
        fleet = _apply_fedscale(fleet, args)
    save_fleet(args.out, fleet)
    samples = sum(device.num_samples for device in fleet.devices)
    sys.stdout.write(
        f"wrote {args.out}: {len(fleet.devices)} devices, {samples} training samples, "
        f"{len(fleet.class_names)} classes, partition {fleet.partition}\n"
    )
    return 0
