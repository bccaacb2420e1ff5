"""Measure this host's throughput as a :class:`~hierfedlora.planner.analytic_costs.ComputeTier`.

The analytic cost model (``planner.analytic_costs`` (A3)) prices FLOPs, bytes and operator calls;
to compare it with ``hierfedlora profile`` on this host, the host's three rates are measured with
torch, the way training runs here (fp32, the threads torch uses):

(H1) ``flops_per_s``: a 1024 x 1024 by 1024 x 1024 fp32 matmul, ``2 * 1024**3`` FLOPs.
(H2) ``memory_bandwidth_bytes_per_s``: copying a 64 MiB tensor into another (read + write).
(H3) ``op_overhead_s``: an add of two one-element tensors (dispatch and allocation, no work).

Medians over ``repeats`` after one warm-up; nothing global is changed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from hierfedlora.planner.analytic_costs import ComputeTier

__all__ = ["measure_compute_tier"]


def _median_s(run: Callable[[], object], repeats: int, inner: int = 1) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            run()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def measure_compute_tier(*, repeats: int = 7, name: str = "this-host") -> ComputeTier:
    """(H1)-(H3) on this host."""
    size = 1024
    a, b = torch.randn(size, size), torch.randn(size, size)
    matmul_s = _median_s(lambda: a @ b, repeats)
    source, target = torch.empty(16 * 2**20), torch.empty(16 * 2**20)  # 64 MiB each
    copy_s = _median_s(lambda: target.copy_(source), repeats)
    x, y = torch.ones(1), torch.ones(1)
    call_s = _median_s(lambda: x + y, repeats, inner=2000)
    return ComputeTier(
        name=name,
        flops_per_s=2 * size**3 / matmul_s,
        memory_bandwidth_bytes_per_s=2 * source.numel() * 4 / copy_s,
        op_overhead_s=call_s,
        sources=(f"measured by models.host_tier on this host ({torch.get_num_threads()} torch threads)",),
    )
