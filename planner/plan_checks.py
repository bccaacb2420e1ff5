"""Checks of a plan's groups against a model: depths, layer sets and LoRA ranks it can serve.

A :class:`~hierfedlora.planner.outcomes.Group` checks its own fields; what it cannot see is the
model: how many layers it has and the run's full LoRA rank. :func:`check_plan_groups` states those
rules, once, for every place that meets a plan and a model (``runtime.engine`` before a run and on
every re-plan, ``runtime.clock``, the baselines' tests):

1. ``depth`` in ``1..num_layers``;
2. ``layers`` (when set) within ``0..num_layers - 1``, and ``depth == num_layers - min(layers)``:
   backward reaches the lowest trained layer, so the frozen prefix ends there;
3. ``lora_rank`` (when set) in ``1..full_rank``.

Examples
--------
>>> from hierfedlora.planner.outcomes import Group, Skew
>>> group = Group(group_id=0, device_ids=("a",), depth=3, intra_rounds=1, local_steps=1,
...     label_skew=Skew(kl=0.0, l1=0.0, hellinger=0.0), layers=(2, 5), lora_rank=16)
>>> for issue in check_groups((group,), num_layers=6, full_rank=8):
...     print(issue)
groups[0].depth must be num_layers - min(layers) = 6 - 2 = 4 (backward reaches the lowest trained layer); got 3
groups[0].lora_rank must be an integer in 1..8 (the run's full LoRA rank); got 16
"""

from __future__ import annotations

from collections.abc import Sequence

from hierfedlora.planner.errors import Issue
from hierfedlora.planner.outcomes import Group, Plan

__all__ = ["check_groups", "check_plan_groups"]


def check_groups(groups: Sequence[Group], *, num_layers: int, full_rank: int | None = None) -> list[Issue]:
    """One :class:`Issue` per group setting a ``num_layers``-layer model of rank ``full_rank`` cannot serve.

    Paths read ``groups[k].<field>``; ``full_rank=None`` skips the rank rule (no model rank known).
    """
    issues: list[Issue] = []
    for k, group in enumerate(groups):
        if not 1 <= group.depth <= num_layers:
            issues.append(
                Issue(f"groups[{k}].depth", f"an integer in 1..{num_layers} (the model's layers)", group.depth)
            )
        if group.layers is not None:
            outside = [layer for layer in group.layers if layer >= num_layers]
            if outside:
                expected = f"layer indices in 0..{num_layers - 1} (the model's layers)"
                issues.append(Issue(f"groups[{k}].layers", expected, group.layers))
            elif group.depth != num_layers - group.layers[0]:
                lowest = group.layers[0]
                expected = (
                    f"num_layers - min(layers) = {num_layers} - {lowest} = {num_layers - lowest} "
                    "(backward reaches the lowest trained layer)"
                )
                issues.append(Issue(f"groups[{k}].depth", expected, group.depth))
        if full_rank is not None and group.lora_rank is not None and group.lora_rank > full_rank:
            expected = f"an integer in 1..{full_rank} (the run's full LoRA rank)"
            issues.append(Issue(f"groups[{k}].lora_rank", expected, group.lora_rank))
    return issues


def check_plan_groups(plan: Plan, *, num_layers: int, full_rank: int | None = None) -> list[Issue]:
    """:func:`check_groups` over ``plan.groups``."""
    return check_groups(plan.groups, num_layers=num_layers, full_rank=full_rank)
