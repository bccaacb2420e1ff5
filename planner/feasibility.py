"""Feasibility arithmetic done before any solver: :func:`check_feasibility` returns a :class:`Conflict` per
contradiction that plain arithmetic proves, with the numbers (``min_group_size × num_groups = 6 × 10 = 60 > 50
devices``; ``d17 needs 2.3 GiB at depth 1 and has 2.0 GiB``), and :func:`device_round_times_s`, every device's
fastest possible round, which the round-budget check and the baselines share.

:func:`hierfedlora.planner.checks.raise_for_problem` runs it after the cross-object checks (examples there).
"""  # noqa: RUF002 (the multiplication sign is what the messages print)

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import NDArray

from hierfedlora.planner import costs
from hierfedlora.planner.grouping.model import resolve_num_groups
from hierfedlora.planner.rule_costs import problem_exchange_bytes
from hierfedlora.planner.types import PlanningProblem

__all__ = [
    "BUDGET_TOLERANCE",
    "FAMILIES",
    "Conflict",
    "check_feasibility",
    "device_round_times_s",
    "format_bytes",
    "group_size_conflicts",
]

FAMILIES = ("num_groups", "group_sizes", "group_samples", "memory", "round_budget", "traffic_budget")
"""The constraint families an :class:`InfeasibleError` can name in ``conflicting``.

``num_groups``, ``group_sizes`` and ``group_samples`` are spelled as ``planner.grouping``
spells them, so the same contradiction reads the same from either module.
"""

BUDGET_TOLERANCE = 1e-6
"""A budget counts as met within this relative tolerance (HiGHS's primal feasibility tolerance)."""

_TIMES = "\u00d7"  # the multiplication sign used in input-check messages
_LISTED_DEVICES = 3  # a long list of offenders helps no one; name a few and count the rest


@dataclasses.dataclass(frozen=True, slots=True)
class Conflict:
    """A contradiction proved by arithmetic: its constraint family, why (with numbers), what to relax."""

    family: str
    reason: str
    hint: str = ""


def format_bytes(num_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (``2.3 GiB``, ``512 B``)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(num_bytes) >= size:
            return f"{num_bytes / size:.1f} {unit}"
    return f"{num_bytes:.0f} B"


def _product(names: tuple[str, ...], values: tuple[int, ...]) -> str:
    """``min_group_size x num_groups = 6 x 10 = 60``, with the multiplication sign."""
    return f"{f' {_TIMES} '.join(names)} = {f' {_TIMES} '.join(map(str, values))} = {math.prod(values)}"


def _two_amounts(need: float, have: float) -> tuple[str, str]:
    """Both amounts in the same short form, or exact bytes when the short forms would read equal."""
    short = format_bytes(need), format_bytes(have)
    return short if short[0] != short[1] else (f"{need:,.0f} B", f"{have:,.0f} B")


# ---------------------------------------------------------------------------------------------
# 1. Cross-object rules: Issues (invalid input)
# ---------------------------------------------------------------------------------------------


def check_feasibility(problem: PlanningProblem) -> list[Conflict]:
    """Contradictions that arithmetic proves before any solver runs, each with its numbers.

    Call on a problem for which :func:`check_problem` found no issue.

    Returns
    -------
    list of Conflict
        In the order of :data:`FAMILIES`; empty when arithmetic finds nothing.
    """
    return [
        *group_size_conflicts(problem),
        *_group_sample_conflicts(problem),
        *_memory_conflicts(problem),
        *_round_budget_conflicts(problem),
        *_traffic_conflicts(problem),
    ]


def group_size_conflicts(problem: PlanningProblem) -> list[Conflict]:
    """The group-size family's conflicts: too few devices for the groups at their minimum size, or too many."""
    num_devices, num_groups = len(problem.devices), problem.num_groups
    smallest, largest = problem.min_group_size or 1, problem.max_group_size
    found: list[Conflict] = []
    if problem.min_group_size is None and largest is None:  # balanced sizes: any K <= N fits
        if num_groups is not None and num_groups > num_devices:
            reason = f"num_groups = {num_groups} > {num_devices} devices: some group would be empty"
            found.append(Conflict("num_groups", reason, f"set num_groups to at most {num_devices}"))
        return found
    if num_groups is None:
        fewest = 1 if largest is None else math.ceil(num_devices / largest)
        most = num_devices // smallest
        if fewest > most:
            sizes = f"at least {smallest}" if largest is None else f"{smallest}..{largest}"
            reason = (
                f"no number of groups fits {num_devices} devices into groups of {sizes} devices: "
                f"at least {fewest} groups are needed and at most {most} can be filled"
            )
            found.append(Conflict("group_sizes", reason, "widen min_group_size..max_group_size"))
        return found
    if num_groups > num_devices:
        reason = f"num_groups = {num_groups} > {num_devices} devices: some group would be empty"
        found.append(Conflict("num_groups", reason, f"set num_groups to at most {num_devices}"))
    if smallest * num_groups > num_devices:
        product = _product(("min_group_size", "num_groups"), (smallest, num_groups))
        reason = f"{product} > {num_devices} devices"
        found.append(Conflict("group_sizes", reason, "lower min_group_size or num_groups"))
    if largest is not None and largest * num_groups < num_devices:
        product = _product(("max_group_size", "num_groups"), (largest, num_groups))
        reason = f"{product} < {num_devices} devices"
        found.append(Conflict("group_sizes", reason, "raise max_group_size or num_groups"))
    return found


def _group_sample_conflicts(problem: PlanningProblem) -> list[Conflict]:
    samples = [device.num_samples for device in problem.devices]
    total, num_groups = sum(samples), problem.num_groups
    if num_groups is None and not group_size_conflicts(problem):
        num_groups = resolve_num_groups(problem)  # the K grouping will use
    least, most = problem.min_group_samples, problem.max_group_samples
    found: list[Conflict] = []
    if least is not None:
        needed = least * (num_groups or 1)  # without num_groups, at least one group exists
        if needed > total:
            words = (
                _product(("min_group_samples", "num_groups"), (least, num_groups))
                if num_groups
                else f"min_group_samples = {least}"
            )
            reason = f"{words} > {total} samples in the fleet"
            found.append(Conflict("group_samples", reason, "lower min_group_samples or num_groups"))
    if most is not None:
        if num_groups is not None and most * num_groups < total:
            product = _product(("max_group_samples", "num_groups"), (most, num_groups))
            reason = f"{product} < {total} samples in the fleet"
            found.append(Conflict("group_samples", reason, "raise max_group_samples or num_groups"))
        too_many = [(d.device_id, n) for d, n in zip(problem.devices, samples, strict=True) if n > most]
        if too_many:
            named = ", ".join(f"{device_id} holds {n}" for device_id, n in too_many[:_LISTED_DEVICES])
            more = f" (and {len(too_many) - _LISTED_DEVICES} more)" if len(too_many) > _LISTED_DEVICES else ""
            reason = f"{named} samples > max_group_samples = {most}{more}; a device cannot be split"
            found.append(Conflict("group_samples", reason, "raise max_group_samples"))
    return found


def _memory_conflicts(problem: PlanningProblem) -> list[Conflict]:
    depth = min(problem.effective_depth_choices)
    need = costs.peak_memory_bytes(problem.cost_model, depth=depth, batch_size=problem.effective_batch_size)
    short = [d for d in problem.devices if d.memory_bytes < need]
    if not short:
        return []
    parts = []
    for device in short[:_LISTED_DEVICES]:
        need_text, have_text = _two_amounts(need, device.memory_bytes)
        parts.append(f"{device.device_id} needs {need_text} at depth {depth} and has {have_text}")
    more = f" (and {len(short) - _LISTED_DEVICES} more)" if len(short) > _LISTED_DEVICES else ""
    hint = "give these devices more memory, lower batch_size, or leave them out of the fleet"
    return [Conflict("memory", "; ".join(parts) + more, hint)]


def _alone_bytes(problem: PlanningProblem, depth: int) -> tuple[int, int]:
    """(C9) one exchange's bytes for a single input (a device alone, or one group): the least a rule moves."""
    return problem_exchange_bytes(problem, depth=depth, num_inputs=1)


def device_round_times_s(problem: PlanningProblem) -> NDArray[np.float64]:
    """(C5) for each device alone: an ``(N, |depths|)`` array of one intra-group round's seconds.

    Exchanges move the rule's bytes (``problem.aggregation``, (C9)) for one input, so under FLoRA,
    whose download grows with the group, this is a lower bound on the device's round in any group.
    """
    cost, depths = problem.cost_model, problem.effective_depth_choices
    scales = np.array([d.compute_scale for d in problem.devices])
    uplink = np.array([d.uplink_mbps for d in problem.devices])
    downlink = np.array([d.downlink_mbps for d in problem.devices])
    steps = costs.step_time_table_s(cost, scales, depths, problem.effective_batch_size)
    pairs = [_alone_bytes(problem, d) for d in depths]
    exchange = costs.exchange_time_table_s(
        cost,
        uplink,
        downlink,
        depths,
        problem.intra_latency_s,
        num_bytes=[up for up, _ in pairs],
        download_bytes=None if all(up == down for up, down in pairs) else [down for _, down in pairs],
    )
    round_s: NDArray[np.float64] = problem.local_steps * steps + exchange
    return round_s


def _round_budget_conflicts(problem: PlanningProblem) -> list[Conflict]:
    if problem.round_budget_s is None:
        return []
    cost, depths, batch = problem.cost_model, problem.effective_depth_choices, problem.effective_batch_size
    memory = np.array([d.memory_bytes for d in problem.devices])[:, None]
    need = np.array([costs.peak_memory_bytes(cost, depth=d, batch_size=batch) for d in depths])[None, :]
    fewest_rounds = min(problem.intra_rounds_choices)
    # Every device is at least as slow inside a group as alone, at its fastest depth that fits.
    alone = np.where(memory >= need, fewest_rounds * device_round_times_s(problem), np.inf)
    fastest = alone.min(axis=1)
    if not np.isfinite(fastest).any():
        return []  # no device fits any depth: the memory conflict says so
    slowest_idx = int(np.argmax(np.where(np.isfinite(fastest), fastest, -np.inf)))
    depth = depths[int(np.argmin(alone[slowest_idx]))]
    up, down = _alone_bytes(problem, depths[0])
    global_s = costs.global_aggregation_s(
        cost,
        [depths[0]],
        backhaul_mbps=problem.backhaul_mbps,
        latency_s=problem.global_latency_s,
        num_bytes=[up],
        download_bytes=None if up == down else [down],
    )
    lower_s = float(fastest[slowest_idx]) + global_s
    if problem.round_budget_s * (1 + BUDGET_TOLERANCE) >= lower_s:
        return []
    reason = (
        f"round_budget_s = {problem.round_budget_s:g} s is below the fastest possible round, {lower_s:.4g} s: "
        f"{problem.devices[slowest_idx].device_id} alone needs {fastest[slowest_idx]:.4g} s at depth {depth} "
        f"with intra_rounds {fewest_rounds}, plus {global_s:.4g} s of global aggregation"
    )
    return [Conflict("round_budget", reason, f"raise round_budget_s to at least {lower_s:.4g} s")]


def _traffic_conflicts(problem: PlanningProblem) -> list[Conflict]:
    if problem.traffic_budget_bytes is None:
        return []
    depth, fewest_rounds = min(problem.effective_depth_choices), min(problem.intra_rounds_choices)
    num_devices = len(problem.devices)
    up, down = _alone_bytes(problem, depth)  # FLoRA stacks at least one input
    least = costs.group_traffic_bytes(
        problem.cost_model,
        num_devices=num_devices,
        depth=depth,
        intra_rounds=fewest_rounds,
        num_bytes=up,
        download_bytes=None if up == down else down,
    )
    if problem.traffic_budget_bytes * (1 + BUDGET_TOLERANCE) >= least:
        return []
    if up == down:
        ways = f"2 ways {_TIMES} {up:,} adapter bytes at depth {depth}"
    else:
        ways = f"({up:,} up + {down:,} down) bytes at depth {depth}"
    rule = "" if problem.aggregation == "fedavg" else f" under {problem.aggregation}"
    reason = (
        f"traffic_budget_bytes = {problem.traffic_budget_bytes:.6g} is below the least possible traffic per round"
        f"{rule}, {least:,} bytes: {num_devices} devices {_TIMES} intra_rounds {fewest_rounds} {_TIMES} {ways}"
    )
    return [Conflict("traffic_budget", reason, f"raise traffic_budget_bytes to at least {least:,}")]


# ---------------------------------------------------------------------------------------------
# 3. Legal but suspicious: warnings
# ---------------------------------------------------------------------------------------------
