"""Faults a real fleet has: devices that drop out, stragglers past a deadline, and poisoned updates.

Injected by the runtime (what happens to the fleet) and defended against by the server (what the
aggregation refuses), all seeded so a resumed run replays the same faults.

(F1) Dropout. In global round ``r`` each device of the plan is offline with probability ``dropout``.
     An offline device trains nothing, receives nothing and sends nothing; its group aggregates over
     the rest. A group with no device online keeps its state, moves no bytes and takes no time, and
     the server merges the other groups only.
(F2) Stragglers. Each online device is slowed by ``straggler_factor`` with probability
     ``straggler_frac`` for the round (its every local step takes that many times longer on the
     simulated clock).
(F3) Deadline. With ``deadline_quantile`` q, every intra-group round of every group closes at the
     q-quantile (numpy's linear interpolation) of its online devices' simulated times: a device
     slower than that misses it, its update is not aggregated (it is reported as dropped), and the
     group's intra round takes the deadline instead of its slowest device's time.
(F4) Poison. Each online device sends a poisoned update with probability ``poison_frac`` for the
     round, of a kind drawn from ``poison_kinds``: ``"nan"`` and ``"inf"`` replace its state by
     non-finite values; ``"scale"`` multiplies its update ``theta_i - theta_start`` by
     ``poison_scale``.
(F5) Screening (the server's defence, on whenever faults are configured). An update is rejected
     when any value is not finite, or when its norm ``||theta_i - theta_start||`` exceeds
     ``norm_bound_ratio`` times the median norm of the finite updates of its group and intra round.
     Rejected devices are named in the round's report; their updates never reach an aggregate.

Draws: round ``r`` uses its own generator, ``default_rng(derive_seed(seed, r, FAULT_STREAM))``, and
always draws the same arrays (one uniform per device and fault, one kind index per device), so
changing one probability leaves the other faults' draws where they were. The engine draws over the
fleet's devices in fleet order, so every plan run on one fleet and seed meets the same faults.

Examples
--------
>>> faults = draw_round_faults(FaultOptions(dropout=0.5), ("a", "b", "c", "d"), seed=0, global_round=1)
>>> sorted(faults.offline) == sorted(draw_round_faults(FaultOptions(dropout=0.5), ("a", "b", "c", "d"),
...                                                    seed=0, global_round=1).offline)
True
>>> FaultOptions(dropout=1.0)
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: dropout must be a number in [0, 1); got 1.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from hierfedlora.models.adapters import AdapterState
from hierfedlora.runtime.fault_options import FAULT_RULES, POISON_KINDS, FaultOptions
from hierfedlora.runtime.local_training import derive_seed

__all__ = [
    "FAULT_RULES",
    "POISON_KINDS",
    "FaultOptions",
    "RoundFaults",
    "draw_round_faults",
    "poison_state",
    "screen_updates",
]

FAULT_STREAM = 0xFA17


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoundFaults:
    """The faults of one global round: offline devices, slow-down factors, poisoned devices and kinds."""

    offline: frozenset[str]
    slowdown: Mapping[str, float]
    poisoned: Mapping[str, str]


def draw_round_faults(options: FaultOptions, device_ids: Sequence[str], *, seed: int, global_round: int) -> RoundFaults:
    """(F1), (F2) and (F4) for ``global_round``: deterministic in ``(seed, global_round, device order)``."""
    rng = np.random.default_rng(derive_seed(seed, global_round, FAULT_STREAM))
    n = len(device_ids)
    off_u, slow_u, poison_u = rng.random(n), rng.random(n), rng.random(n)
    kind_idx = rng.integers(0, len(options.poison_kinds), size=n)
    offline = frozenset(d for d, u in zip(device_ids, off_u, strict=True) if u < options.dropout)
    slowdown = {
        d: float(options.straggler_factor)
        for d, u in zip(device_ids, slow_u, strict=True)
        if d not in offline and u < options.straggler_frac
    }
    poisoned = {
        d: options.poison_kinds[int(k)]
        for d, u, k in zip(device_ids, poison_u, kind_idx, strict=True)
        if d not in offline and u < options.poison_frac
    }
    return RoundFaults(offline=offline, slowdown=slowdown, poisoned=poisoned)


def poison_state(start: AdapterState, state: AdapterState, kind: str, scale: float) -> AdapterState:
    """(F4): the state a poisoned device sends instead of ``state`` (inputs untouched)."""
    if kind == "nan":
        return {key: torch.full_like(value, math.nan) for key, value in state.items()}
    if kind == "inf":
        return {key: torch.full_like(value, math.inf) for key, value in state.items()}
    return {key: start[key] + scale * (value - start[key]) for key, value in state.items()}


def _update_norm(start: AdapterState, state: AdapterState) -> float:
    total = 0.0
    for key, value in state.items():
        total += float(torch.sum((value.double() - start[key].double()) ** 2))
    return math.sqrt(total)


def screen_updates(start: AdapterState, states: Sequence[AdapterState], *, norm_bound_ratio: float) -> dict[int, str]:
    """(F5): positions of the updates to reject, each with its reason.

    Examples
    --------
    >>> zero = {"w": torch.zeros(2)}
    >>> honest, boosted, broken = {"w": torch.ones(2)}, {"w": torch.ones(2) * 50}, {"w": torch.tensor([1.0, math.nan])}
    >>> screen_updates(zero, [honest, honest, boosted, broken], norm_bound_ratio=10.0)
    {2: 'update norm 70.7 > 10 x the median 1.41', 3: 'non-finite values'}
    """
    rejected: dict[int, str] = {}
    norms: dict[int, float] = {}
    for position, state in enumerate(states):
        if not all(bool(torch.isfinite(value).all()) for value in state.values()):
            rejected[position] = "non-finite values"
        else:
            norms[position] = _update_norm(start, state)
    if norms:
        median = float(np.median(list(norms.values())))
        for position, norm in norms.items():
            if norm > norm_bound_ratio * median and norm > 0:
                rejected[position] = f"update norm {norm:.3g} > {norm_bound_ratio:g} x the median {median:.3g}"
    return dict(sorted(rejected.items()))
