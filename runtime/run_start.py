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
import logging
from pathlib import Path

import numpy as np
import torch

from hierfedlora.models.adapters import AdapterState, initial_adapter_state
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.outcomes import Plan
from hierfedlora.runtime.aggregation_rules import BaseDelta
from hierfedlora.runtime.checkpoint import MANIFEST_NAME, RunState, load_checkpoint, restore_numpy_rng
from hierfedlora.runtime.clock import SimClock
from hierfedlora.runtime.context import RunContext
from hierfedlora.runtime.local_training import derive_seed
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.rank_pruning import rank_tensors, ranks_from_tensors
from hierfedlora.runtime.replanning import plan_in_force

__all__ = ["BASE_PREFIX", "GLOBAL_PREFIX", "RunStart", "checkpoint_tensors", "start_run"]

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


def start_run(
    folder: Path, plan: Plan, context: RunContext, options: RunOptions, resume: bool, plans: dict[str, Plan]
) -> RunStart:
    """A new run in an empty ``folder``, or (``resume``) the continuation of its last committed round.

    ``plans`` (plan id -> plan) gains every re-plan of ``plan``'s lineage a resumed run has used.

    Raises
    ------
    InvalidInputError
        A new run into a folder that holds a checkpoint.
    ResumeMismatchError
        A checkpoint of another plan, fleet, model or aggregation rule.
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
