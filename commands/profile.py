"""``hierfedlora profile``: measure the real model on this host and write a CostModel JSON."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``profile`` subcommand."""
    parser = commands.add_parser(
        "profile",
        help="measure the model's per-layer costs on this host; write a cost model JSON",
        description="Measure per-layer forward/backward seconds per sample, LoRA bytes and activation memory of a "
        "real pretrained model on this host (fully offline) and write a CostModel JSON.",
    )
    parser.add_argument("--model", default="default", help="'default' (packaged all-MiniLM-L6-v2) or a local HF dir")
    parser.add_argument("--num-labels", type=int, default=26, help="classes of the classification head (default 26)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step (default 16)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sample (default 64)")
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank r (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head initialisation and inputs")
    parser.add_argument(
        "--analytic",
        type=Path,
        default=None,
        metavar="CONFIG_JSON",
        help="price a Hugging Face config.json analytically instead of measuring (no weights, no torch work)",
    )
    parser.add_argument(
        "--tier",
        default="reference-host",
        help="with --analytic: a compute tier (reference-host, jetson-agx-orin, phone-flagship) or this-host "
        "(measured now with torch)",
    )
    parser.add_argument("--target-modules", default=None, help="with --analytic: LoRA targets, e.g. q_proj,v_proj")
    parser.add_argument("--out", required=True, type=Path, help="where to write the cost model JSON")
    parser.set_defaults(handler=handle)


def _analytic(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The analytic cost model of ``--analytic`` on ``--tier``."""
    from hierfedlora.commands.common import read_json_object
    from hierfedlora.planner.analytic_costs import COMPUTE_TIERS, analytic_cost_model, model_shape
    from hierfedlora.planner.errors import InvalidInputError, Issue

    if args.tier == "this-host":
        from hierfedlora.models.host_tier import measure_compute_tier

        tier = measure_compute_tier()
    elif args.tier in COMPUTE_TIERS:
        tier = COMPUTE_TIERS[args.tier]
    else:
        known = ", ".join([*COMPUTE_TIERS, "this-host"])
        raise InvalidInputError([Issue("--tier", f"one of {known}", args.tier)], "command line")
    targets = tuple(args.target_modules.split(",")) if args.target_modules else None
    config = read_json_object(args.analytic)
    shape = model_shape(config, target_modules=targets)
    name = str(config.get("_name_or_path") or "").rstrip("/").split("/")[-1] or args.analytic.resolve().parent.name
    return analytic_cost_model(
        shape,
        tier,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lora_rank=args.lora_rank,
        num_labels=args.num_labels,
        model_name=name,
    )


def handle(args: argparse.Namespace) -> int:
    """Run ``profile``."""
    from hierfedlora.models.catalog import ModelSpec
    from hierfedlora.models.profiling import measure_cost_model
    from hierfedlora.planner.io import to_json, write_json

    if args.analytic is not None:
        cost_model = _analytic(args)
    else:
        spec = ModelSpec(
            path=args.model, num_labels=args.num_labels, lora_rank=args.lora_rank, max_seq_len=args.seq_len
        )
        cost_model = measure_cost_model(
            spec, batch_size=args.batch_size, seq_len=args.seq_len, repeats=args.repeats, seed=args.seed
        )
    write_json(args.out, cost_model)
    log.info("wrote %s", args.out)
    sys.stdout.write(to_json(cost_model) + "\n")
    return 0
