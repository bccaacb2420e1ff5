"""Synthetic fleets for capacity studies: label skew drawn from a Dirichlet model, no data set needed.

A study of "what if we had 8,000 phones" needs label counts and device profiles, not texts.
:func:`synthetic_fleet` draws them:

(S1) Label skew. Device ``i`` draws class proportions ``q_i ~ Dirichlet(alpha * 1_C)`` and holds
     ``n`` samples split ``Multinomial(n, q_i)`` (the per-device Dirichlet model of Hsu et al.
     2019, "Measuring the effects of non-identical data distribution", arXiv 1909.06335). Small
     ``alpha`` gives devices few classes; large ``alpha`` approaches IID. A device whose draw is
     all zeros cannot occur (``n >= 1``).
(S2) Device profiles. Tiers are assigned in the mix's shares (``tiers.assign_tiers``) and each
     device's speed, memory and link are drawn log-uniformly within its tier's ranges, as
     ``tiers.draw_device`` does, vectorised.

Three seeds derived from ``seed`` (``numpy.random.SeedSequence``) drive the labels, the tier order
and the draws, so one seed fixes the fleet, and the first ``N`` devices of a fleet do not depend
on anything but ``seed`` and the arguments.

Examples
--------
>>> fleet = synthetic_fleet(num_devices=4, num_classes=3, alpha=0.5, samples_per_device=10,
...                         tier_mix="phones", seed=0)
>>> [d.num_samples for d in fleet.devices], fleet.partition
([10, 10, 10, 10], 'synthetic dirichlet(alpha=0.5) over 3 classes, 10 samples per device')
>>> synthetic_fleet(num_devices=0, num_classes=3, alpha=0.5, samples_per_device=10)
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: num_devices must be an integer >= 1; got 0
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.tiers import NETWORKS, TIERS, assign_tiers, resolve_tier_mix
from hierfedlora.planner.rules import is_int
from hierfedlora.planner.types import DeviceProfile, Fleet

__all__ = ["synthetic_fleet", "synthetic_label_counts"]

_MIB = 2**20


def _check(num_devices: object, num_classes: object, alpha: object, samples_per_device: object) -> list[Issue]:
    issues = []
    for name, value, least in (
        ("num_devices", num_devices, 1),
        ("num_classes", num_classes, 2),
        ("samples_per_device", samples_per_device, 1),
    ):
        if not (is_int(value) and value >= least):  # type: ignore[operator]
            issues.append(Issue(name, f"an integer >= {least}", value))
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha > 0):
        issues.append(Issue("alpha", "a finite number > 0", alpha))
    return issues


def synthetic_label_counts(
    num_devices: int, num_classes: int, alpha: float, samples_per_device: int, rng: np.random.Generator
) -> np.ndarray:
    """(S1) An ``(N, C)`` int64 array of label counts: Dirichlet(alpha) proportions, multinomial counts."""
    proportions = rng.dirichlet(np.full(num_classes, float(alpha)), size=num_devices)
    # Dirichlet draws at tiny alpha can underflow to all zeros; such a device takes one class.
    empty = ~np.isfinite(proportions).all(axis=1) | (proportions.sum(axis=1) <= 0)
    if empty.any():
        proportions[empty] = np.eye(num_classes)[rng.integers(0, num_classes, int(empty.sum()))]
    proportions /= proportions.sum(axis=1, keepdims=True)
    return rng.multinomial(samples_per_device, proportions).astype(np.int64)


def _log_uniform(ranges: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    low, high = ranges[:, 0], ranges[:, 1]
    return low * (high / low) ** quantiles


def synthetic_fleet(
    *,
    num_devices: int,
    num_classes: int,
    alpha: float,
    samples_per_device: int,
    tier_mix: str | Mapping[str, float] = "paper",
    network: str | None = None,
    seed: int = 0,
) -> Fleet:
    """A fleet of ``num_devices`` devices with Dirichlet(``alpha``) label skew over ``num_classes`` classes.

    Parameters
    ----------
    num_devices, num_classes, samples_per_device : int
    alpha : float
        Dirichlet concentration of each device's class proportions (S1).
    tier_mix : str or mapping of str to float
        A preset of :data:`~hierfedlora.planner.fleets.tiers.PRESETS` or tier name -> weight (S2).
    network : str or None
        Put every device on this :data:`~hierfedlora.planner.fleets.tiers.NETWORKS` link class.
    seed : int

    Raises
    ------
    InvalidInputError
        Every bad argument at once, each naming its field.
    """
    issues = _check(num_devices, num_classes, alpha, samples_per_device)
    try:
        resolve_tier_mix(tier_mix)
    except InvalidInputError as err:
        issues.extend(err.issues)
    if network is not None and network not in NETWORKS:
        issues.append(Issue("network", f"one of {', '.join(map(repr, NETWORKS))}, or null", network))
    if not (is_int(seed) and seed >= 0):
        issues.append(Issue("seed", "an integer >= 0", seed))
    if issues:
        raise InvalidInputError(issues)
    label_seed, tier_seed, draw_seed = np.random.SeedSequence(seed).spawn(3)
    counts = synthetic_label_counts(
        num_devices, num_classes, alpha, samples_per_device, np.random.default_rng(label_seed)
    )
    tiers = assign_tiers(num_devices, tier_mix, np.random.default_rng(tier_seed))
    names = sorted(set(tiers))
    index = np.array([names.index(t) for t in tiers]) if len(names) > 1 else np.zeros(num_devices, dtype=int)
    links = [NETWORKS[network or TIERS[name].network] for name in names]
    speed = np.array([TIERS[name].compute_scale for name in names], dtype=float)[index]
    memory = np.array([TIERS[name].memory_bytes for name in names], dtype=float)[index]
    up = np.array([link.uplink_mbps for link in links], dtype=float)[index]
    down = np.array([link.downlink_mbps for link in links], dtype=float)[index]
    quantiles = np.random.default_rng(draw_seed).random((num_devices, 3))
    scales = _log_uniform(speed, quantiles[:, 0])
    memories = (_log_uniform(memory, quantiles[:, 1]) // _MIB).astype(np.int64) * _MIB
    uplinks = _log_uniform(up, quantiles[:, 2])  # one draw for both directions: same radio, same place
    downlinks = _log_uniform(down, quantiles[:, 2])
    devices = tuple(
        DeviceProfile(
            device_id=f"d{i}",
            label_counts=tuple(row),
            compute_scale=float(scales[i]),
            memory_bytes=int(memories[i]),
            uplink_mbps=float(uplinks[i]),
            downlink_mbps=float(downlinks[i]),
            tier=tiers[i],
        )
        for i, row in enumerate(counts.tolist())
    )
    return Fleet(
        devices=devices,
        class_names=tuple(f"class{c}" for c in range(num_classes)),
        partition=f"synthetic dirichlet(alpha={alpha:g}) over {num_classes} classes, "
        f"{samples_per_device} samples per device",
        seed=seed,
    )
