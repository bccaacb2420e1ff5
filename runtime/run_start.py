"""Where a run's round loop starts, and the tensors each committed round leaves behind.

A new run starts from seeded adapters (``models.adapters.initial_adapter_state``), an empty base
delta, no pruned ranks, the clock at 0 and a numpy generator seeded from the run's seed. A resumed
run starts from its last committed checkpoint, refusing one of another plan, fleet, model or
aggregation rule (``runtime.checkpoint.load_checkpoint``); the plan it continues is the one in
force at that commit (``runtime.replanning.plan_in_force``). A checkpoint's tensors hold the
global adapter state under ``global.``, the base weights' delta under ``base.`` and the pruned
ranks under ``rank.`` (:func:`checkpoint_tensors`); :func:`start_run` reads exactly these back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from hierfedlora.models.adapters import AdapterState, initial_adapter_state
from hierfedlora.planner.errors import InvalidInputError, Issue, ResumeMismatchError
from hierfedlora.planner.io import to_dict
from hierfedlora.planner.outcomes import Plan
from hierfedlora.runtime.aggregation_rules import BaseDelta
from hierfedlora.runtime.checkpoint import MANIFEST_NAME, RunState, load_checkpoint, restore_numpy_rng
from hierfedlora.runtime.clock import SimClock
from hierfedlora.runtime.context import RunContext
from hierfedlora.runtime.faults import FaultOptions
from hierfedlora.runtime.local_training import derive_seed
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.rank_pruning import rank_tensors, ranks_from_tensors
from hierfedlora.runtime.replanning import plan_in_force

__all__ = ["BASE_PREFIX", "GLOBAL_PREFIX", "RunStart", "checkpoint_tensors", "run_settings", "start_run"]

log = logging.getLogger(__name__)

GLOBAL_PREFIX = "global."
"""Checkpoint tensor names of the global adapter state: ``global.<adapter key>``."""
BASE_PREFIX = "base."
"""Checkpoint tensor names of the base weights' delta (FedEx-LoRA, FLoRA): ``base.<module>``."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunStart:
    """What the round loop starts from.

    ``state`` is the last committed :class:`RunState` (``None`` for a new run); ``plan`` the plan
    in force; ``ranks`` each group's pruned LoRA rank (HetLoRA; empty otherwise); ``rng`` the
    generator the clock's noise draws from, restored to its state at the last commit.
    """

    state: RunState | None
    global_state: AdapterState
    base_delta: BaseDelta
    ranks: dict[int, int]
    clock: SimClock
    rng: np.random.Generator
    plan: Plan


# Settings a resume may change: how many rounds in all, where the model is read from (model_sha256 checks what is
# read), caches that are exact either way, the memory knobs (the same math in other chunks, rounding within
# 1e-5: a run stopped for memory resumes with less) and token packing (the same values).
_FREE_ON_RESUME = frozenset(
    {"rounds", "model", "use_prefix_cache", "prefix_cache_max_mib", "batched_devices", "batch_memory_mib",
     "pack_tokens", "eval_batch_size", "schema_version"}
)  # fmt: skip


def run_settings(options: RunOptions, faults: FaultOptions | None) -> str:
    """JSON text of what decides a run's computation (:attr:`RunState.settings`), compared on resume."""
    chosen = {k: v for k, v in to_dict(options).items() if k not in _FREE_ON_RESUME}
    return json.dumps({"options": chosen, "faults": to_dict(faults) if faults else None}, sort_keys=True)


def _check_settings(recorded: str, current: str) -> None:
    """Refuse a resume whose settings differ from the checkpoint's, naming the first field that does."""
    if not recorded:  # a folder written before settings were recorded
        return
    try:
        before = json.loads(recorded)
    except json.JSONDecodeError:
        raise ResumeMismatchError("settings", current, recorded[:40]) from None
    now = json.loads(current)
    for part in ("options", "faults"):
        old, new = before.get(part) if isinstance(before, dict) else None, now[part]
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    raise ResumeMismatchError(f"{part}.{key}", new.get(key), old.get(key))
        elif old != new:
            raise ResumeMismatchError(part, new, old)


def start_run(
    folder: Path,
    plan: Plan,
    context: RunContext,
    options: RunOptions,
    resume: bool,
    plans: dict[str, Plan],
    faults: FaultOptions | None = None,
) -> RunStart:
    """A new run in an empty ``folder``, or (``resume``) the continuation of its last committed round.

    ``plans`` (plan id -> plan) gains every re-plan of ``plan``'s lineage a resumed run has used.

    Raises
    ------
    InvalidInputError
        A new run into a folder that holds a checkpoint.
    ResumeMismatchError
        A checkpoint of another plan, fleet, model or aggregation rule, or made under other settings (a run
        option or fault option, named; ``rounds`` may change).
    """
    if resume and (folder / MANIFEST_NAME).exists():
        current = plan_in_force(folder, plan, plans)
        state, tensors = load_checkpoint(
            folder,
            expected_plan_id=current.plan_id,
            expected_fleet_sha256=context.fleet_sha256,
            expected_model_sha256=context.model_sha256,
            expected_aggregation=options.aggregation,
        )
        _check_settings(state.settings, run_settings(options, faults))
        global_state = {k.removeprefix(GLOBAL_PREFIX): v for k, v in tensors.items() if k.startswith(GLOBAL_PREFIX)}
        base_delta = {k.removeprefix(BASE_PREFIX): v for k, v in tensors.items() if k.startswith(BASE_PREFIX)}
        log.info("resuming %s after global round %d", folder, state.global_round)
        rng = restore_numpy_rng(state.numpy_rng_state)
        return RunStart(state, global_state, base_delta, ranks_from_tensors(tensors), SimClock(state.sim_time_s), rng,
                        current)  # fmt: skip
    if (folder / MANIFEST_NAME).exists():
        raise InvalidInputError([Issue("run_dir", "an empty folder for a new run (or pass resume)", str(folder))])
    rng = np.random.default_rng(derive_seed(options.seed, 11))
    # Seeded, not read from the model: a shared context's model holds the last run's adapters.
    initial = initial_adapter_state(context.model.peft_model, context.model.max_depth, options.seed)
    return RunStart(None, initial, {}, {}, SimClock(0.0), rng, plan)


def checkpoint_tensors(
    global_state: AdapterState, base_delta: BaseDelta, ranks: dict[int, int]
) -> dict[str, torch.Tensor]:
    """The tensors a round's checkpoint saves: the global state, the base delta and the pruned ranks, by prefix."""
    tensors = {GLOBAL_PREFIX + key: value for key, value in global_state.items()}
    tensors.update({BASE_PREFIX + module: value.contiguous() for module, value in base_delta.items()})
    tensors.update(rank_tensors(ranks))
    return tensors
