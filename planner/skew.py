"""Label skew of a group: KL, L1 and Hellinger distance from the global distribution.

Examples
--------
>>> s = label_skew([5, 5], [10, 30])
>>> round(s.l1, 3), round(s.hellinger, 3)
(0.5, 0.185)
>>> label_skew([1, 3], [10, 30]).kl
0.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from hierfedlora.planner.outcomes import Skew

__all__ = ["label_distribution", "label_skew", "total_variation"]


def label_distribution(counts: ArrayLike) -> np.ndarray:
    """Counts normalised to sum to one (a float array)."""
    array = np.asarray(counts, dtype=float)
    total = array.sum()
    if total <= 0:
        raise ValueError("label counts sum to zero")  # internal: DeviceProfile forbids it
    return array / total


def label_skew(group_counts: Sequence[int] | ArrayLike, global_counts: Sequence[int] | ArrayLike) -> Skew:
    """KL(group || global) in nats, L1 distance and Hellinger distance of two count vectors."""
    p = label_distribution(group_counts)
    q = label_distribution(global_counts)
    support = p > 0
    kl = float(np.sum(p[support] * np.log(p[support] / q[support])))
    l1 = float(np.abs(p - q).sum())
    hellinger = float(np.sqrt(max(0.0, 0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2))))
    return Skew(kl=max(0.0, kl), l1=l1, hellinger=hellinger)


def total_variation(group_counts: ArrayLike, global_counts: ArrayLike) -> float:
    """Total-variation distance, ``L1 / 2``, in [0, 1]."""
    return 0.5 * float(np.abs(label_distribution(group_counts) - label_distribution(global_counts)).sum())
