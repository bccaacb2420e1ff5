"""Checks that span several objects, and feasibility arithmetic done before any solver.

Field rules live with their types (``planner.types``); this module checks what no single
object can see, in three passes, so ``make_plan`` fails from a library call as the CLI does:

1. :func:`check_problem` returns an :class:`Issue` per broken cross-object rule (unique
   device ids, one class count per class everywhere, depths within the model's layers,
   ordered bounds, distinct ``intra_rounds_choices``).
2. :func:`check_feasibility` returns a :class:`Conflict` per contradiction that plain
   arithmetic proves, with the numbers (``min_group_size × num_groups = 6 × 10 = 60 > 50
   devices``; ``d17 needs 2.3 GiB at depth 1 and has 2.0 GiB``).
3. :func:`find_warnings` returns the legal but suspicious settings.

:func:`raise_for_problem` runs all three: :class:`InvalidInputError` for issues (all of them
at once), :class:`InfeasibleError` for conflicts (all of them at once, ``conflicting``
naming the constraint families), and a :class:`HierFedLoraWarning` per warning.

Examples
--------
>>> from hierfedlora.planner.types import CostModel, DeviceProfile, PlanningProblem
>>> cost = CostModel(model_name="toy", num_layers=2, batch_size=1, seq_len=8,
...     embedding_forward_s=0.0, layer_forward_s=(0.5, 0.5), layer_backward_s=(1.0, 1.0),
...     head_step_s=0.0, layer_optimizer_s=0.0, adapter_bytes_per_layer=1_000_000, head_bytes=0,
...     activation_bytes_per_sample_per_layer=1, optimizer_bytes_per_layer=0,
...     base_model_bytes=1_000_000)
>>> devices = tuple(DeviceProfile(device_id="d0", label_counts=(5, 5), compute_scale=1.0,
...     memory_bytes=2**30, uplink_mbps=16.0, downlink_mbps=16.0) for _ in range(3))
>>> problem = PlanningProblem(devices=devices, cost_model=cost, num_groups=2, min_group_size=2,
...     depth_choices=(1, 3))
>>> for issue in check_problem(problem):
...     print(issue)
devices[1].device_id must be a device id unique in the fleet ('d0' is also devices[0]); got 'd0'
devices[2].device_id must be a device id unique in the fleet ('d0' is also devices[0]); got 'd0'
depth_choices must be depths within 1..2 (the cost model's num_layers); got (1, 3)
>>> [conflict.family for conflict in check_feasibility(problem)]
['group_sizes']
>>> print(check_feasibility(problem)[0].reason)
min_group_size × num_groups = 2 × 2 = 4 > 3 devices
"""  # noqa: RUF002 (the multiplication sign is what the messages print)

from __future__ import annotations

import warnings

from hierfedlora.planner import costs
from hierfedlora.planner.errors import HierFedLoraWarning, InfeasibleError, InvalidInputError, Issue
from hierfedlora.planner.feasibility import (
    BUDGET_TOLERANCE,
    FAMILIES,
    Conflict,
    check_feasibility,
    device_round_times_s,
    format_bytes,
    group_size_conflicts,
)
from hierfedlora.planner.grouping.model import resolve_num_groups
from hierfedlora.planner.rules import MAX_BYTES, MAX_COUNT
from hierfedlora.planner.types import PlanningProblem

__all__ = [
    "BUDGET_TOLERANCE",
    "FAMILIES",
    "Conflict",
    "check_feasibility",
    "device_round_times_s",
    "check_problem",
    "find_warnings",
    "format_bytes",
    "raise_for_problem",
]


def check_problem(problem: PlanningProblem) -> list[Issue]:
    """Every broken rule that spans objects, as :class:`Issue` s with paths into the problem.

    Parameters
    ----------
    problem : PlanningProblem
        Already valid field by field (its ``__post_init__`` ran).

    Returns
    -------
    list of Issue
        Empty when the problem is consistent.
    """
    issues: list[Issue] = []
    first_seen: dict[str, int] = {}
    for idx, device in enumerate(problem.devices):
        if device.device_id in first_seen:
            other = first_seen[device.device_id]
            expected = f"a device id unique in the fleet ({device.device_id!r} is also devices[{other}])"
            issues.append(Issue(f"devices[{idx}].device_id", expected, device.device_id))
        first_seen.setdefault(device.device_id, idx)
    num_classes = len(problem.devices[0].label_counts)
    for idx, device in enumerate(problem.devices[1:], start=1):
        if len(device.label_counts) != num_classes:
            expected = f"a list of {num_classes} counts, one per class as in devices[0]"
            issues.append(Issue(f"devices[{idx}].label_counts", expected, device.label_counts))
    head_classes = problem.cost_model.num_labels
    if head_classes is not None and head_classes != num_classes:
        issues.append(
            Issue(
                "cost_model.num_labels",
                f"the fleet's class count, {num_classes} (the head's bytes are priced for its classes)",
                head_classes,
                "re-size the head with planner.types.with_num_labels(cost_model, num_classes), "
                "or profile with --num-labels",
            )
        )
    if problem.aggregation == "fedex" and problem.cost_model.dense_bytes_per_layer is None:
        issues.append(
            Issue(
                "cost_model.dense_bytes_per_layer",
                "the bytes of one layer's dense target matrices when aggregation is fedex (its residual is priced)",
                None,
                "profile the model again ('hierfedlora profile' records it)",
            )
        )
    num_layers = problem.cost_model.num_layers
    if problem.depth_choices is not None and not all(1 <= d <= num_layers for d in problem.depth_choices):
        expected = f"depths within 1..{num_layers} (the cost model's num_layers)"
        issues.append(Issue("depth_choices", expected, problem.depth_choices))
    if (
        problem.max_group_size is not None
        and problem.min_group_size is not None
        and problem.max_group_size < problem.min_group_size
    ):
        expected = f">= min_group_size ({problem.min_group_size}), or null"
        issues.append(Issue("max_group_size", expected, problem.max_group_size))
    if (
        problem.max_group_samples is not None
        and problem.min_group_samples is not None
        and problem.max_group_samples < problem.min_group_samples
    ):
        expected = f">= min_group_samples ({problem.min_group_samples}), or null"
        issues.append(Issue("max_group_samples", expected, problem.max_group_samples))
    if len(set(problem.intra_rounds_choices)) != len(problem.intra_rounds_choices):
        issues.append(Issue("intra_rounds_choices", "a list of distinct integers >= 1", problem.intra_rounds_choices))
    # the planner's memory arithmetic is int64: the largest need must fit, and anything past MAX_BYTES is a mistake
    peak = costs.peak_memory_bytes(problem.cost_model, depth=num_layers, batch_size=problem.effective_batch_size)
    if peak > MAX_BYTES:
        expected = f"a cost model and batch size whose peak training memory is at most {MAX_BYTES:g} bytes"
        issues.append(Issue("cost_model", expected, f"{peak:.3g} bytes at batch {problem.effective_batch_size}"))
    total = sum(sum(device.label_counts) for device in problem.devices)
    if total > MAX_COUNT:
        issues.append(Issue("devices", f"at most {MAX_COUNT:g} samples in all", total))
    return issues


# ---------------------------------------------------------------------------------------------
# 2. Feasibility arithmetic: Conflicts (infeasible)
# ---------------------------------------------------------------------------------------------


def find_warnings(problem: PlanningProblem) -> list[str]:
    """Messages for legal but suspicious settings (one group, full depth only, no intra-group rounds)."""
    found = []
    num_groups = problem.num_groups
    if num_groups is None and not group_size_conflicts(problem):
        num_groups = resolve_num_groups(problem)
    if num_groups == 1:
        words = (
            "num_groups = 1" if problem.num_groups else f"num_groups resolves to 1 for {len(problem.devices)} devices"
        )
        found.append(f"{words}: one group is flat federated LoRA; grouping and intra_rounds have no effect")
    num_layers = problem.cost_model.num_layers
    if problem.effective_depth_choices == (num_layers,):
        found.append(
            f"depth_choices = ({num_layers},) allows full depth only: no group can save compute, memory or "
            "traffic with a shallower depth"
        )
    if tuple(problem.intra_rounds_choices) == (1,):
        found.append("intra_rounds_choices = (1,): groups never aggregate between global rounds")
    return found


def raise_for_problem(problem: PlanningProblem, *, stacklevel: int = 2) -> None:
    """Check ``problem`` completely; raise on the first failing pass, warn on suspicious input.

    Parameters
    ----------
    problem : PlanningProblem
    stacklevel : int
        Passed to :func:`warnings.warn`: 2 points at the caller of this function; callers
        that wrap it (``make_plan``) add one so the warning points at *their* caller.

    Raises
    ------
    InvalidInputError
        Listing every :func:`check_problem` issue.
    InfeasibleError
        Listing every :func:`check_feasibility` conflict: ``reason`` joins their reasons,
        ``conflicting`` names their families, ``hint`` joins their hints.

    Warns
    -----
    HierFedLoraWarning
        One per :func:`find_warnings` message.
    """
    issues = check_problem(problem)
    if issues:
        raise InvalidInputError(issues)
    conflicts = check_feasibility(problem)
    if conflicts:
        families = tuple(dict.fromkeys(conflict.family for conflict in conflicts))
        raise InfeasibleError(
            "; ".join(conflict.reason for conflict in conflicts),
            conflicting=families,
            hint="; ".join(dict.fromkeys(conflict.hint for conflict in conflicts if conflict.hint)),
        )
    for message in find_warnings(problem):
        warnings.warn(message, HierFedLoraWarning, stacklevel=stacklevel)
