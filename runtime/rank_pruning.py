"""HetLoRA's rank self-pruning in the runtime: run state of per-group ranks, pruned after every round.

Under the ``hetlora`` rule (``runtime.aggregation_rules``) every group trains a rank ``r_k``: its plan's
``lora_rank`` (``None``: the run's full rank) until it prunes. After each global round, a group whose
update was merged decides with :func:`~hierfedlora.runtime.aggregation_rules.hetlora_prune_rank` on its
own aggregated state whether to drop its last rank component (``r_k - 1``, never below 1). From the next
round on it starts from the global adapters truncated to its new rank (``models.adapters.truncate_rank``)
and its exchanges move that rank's bytes (``costs.group_adapter_bytes``, so the clock prices it).

HetLoRA (Cho et al., arXiv 2401.06432, Sec. 3.2) prunes each *client's* rank during local training, with
a regulariser on the tail components and a decay factor; our plans give ranks per group (HetLoRA-like
groups are capability classes), so a group prunes as one client would, once per global round, by the
norm test of ``hetlora_prune_rank`` (``RunOptions.hetlora_prune_gamma``, default 0.99: the last
component carries under 1% of the module norms) and without the regulariser: our choices where the
paper leaves the test open.

The ranks are run state: checkpointed as ``rank.<group_id>`` int64 tensors beside the adapters and
restored on resume, so a resumed run prunes exactly as an uninterrupted one. They belong to the plan in
force; a re-plan starts from the new plan's ranks.

Examples
--------
>>> ranks_from_tensors(rank_tensors({0: 6, 2: 3}))
{0: 6, 2: 3}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from hierfedlora.models.adapters import AdapterState
from hierfedlora.planner.outcomes import Plan
from hierfedlora.runtime.aggregation_rules import hetlora_prune_rank

__all__ = ["PRUNE_GAMMA", "RANK_PREFIX", "prune_ranks", "rank_tensors", "ranked_plan", "ranks_from_tensors"]

RANK_PREFIX = "rank."
PRUNE_GAMMA = 0.99
"""The default ``gamma`` (``RunOptions.hetlora_prune_gamma``): prune when the last component carries under
``1 - gamma`` of the norm."""


def ranked_plan(plan: Plan, ranks: Mapping[int, int]) -> Plan:
    """``plan`` with each group's ``lora_rank`` set to its pruned rank (unchanged groups as they are)."""
    if not ranks:
        return plan
    groups = tuple(
        dataclasses.replace(g, lora_rank=ranks[g.group_id]) if g.group_id in ranks else g for g in plan.groups
    )
    return dataclasses.replace(plan, groups=groups)


def prune_ranks(
    plan: Plan,
    states: Sequence[AdapterState],
    contributed: Sequence[bool],
    ranks: Mapping[int, int],
    full_rank: int,
    *,
    gamma: float = PRUNE_GAMMA,
) -> dict[int, int]:
    """The ranks after a round: each contributing group's rank, pruned by its aggregated state.

    ``plan`` is the round's plan (its ``lora_rank`` already the pruned ones); only groups whose rank
    has fallen below the one they were planned with appear in the result.
    """
    pruned = dict(ranks)
    for group, state, took_part in zip(plan.groups, states, contributed, strict=True):
        rank = group.lora_rank or full_rank
        if took_part:
            new_rank = hetlora_prune_rank(state, rank, gamma=gamma)
            if new_rank < rank:
                pruned[group.group_id] = new_rank
    return pruned


def rank_tensors(ranks: Mapping[int, int]) -> dict[str, torch.Tensor]:
    """The ranks as checkpoint tensors (``rank.<group_id>``)."""
    return {f"{RANK_PREFIX}{group_id}": torch.tensor([rank], dtype=torch.int64) for group_id, rank in ranks.items()}


def ranks_from_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[int, int]:
    """The ranks a checkpoint holds (none before a ``hetlora`` run's first round)."""
    return {
        int(name.removeprefix(RANK_PREFIX)): int(value.reshape(-1)[0])
        for name, value in tensors.items()
        if name.startswith(RANK_PREFIX)
    }
