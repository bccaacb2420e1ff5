"""What-if benchmark: the 12-setting capacity study (80 / 800 / 8,000 devices x 2 device mixes x 2 backhauls).

Run with::

    setsid .venv/bin/python -m pytest tests/benchmarks/test_whatif_bench.py --benchmark-only -q -s; uptime

It plans every setting as ``hierfedlora whatif`` does (synthetic fleets, one grouping per fleet, the packaged
model priced analytically, a 1 Gbit/s server link), checks that every row planned, and asserts the issue's target
in CPU seconds (a loaded host changes CPU seconds little): the whole study under 60 s. ``extra_info`` holds CPU s,
wall s and the load average.
"""

from __future__ import annotations

import os
import time

import pytest

from hierfedlora.planner.whatif import GroupingCache, Study, run_point, study_points

pytestmark = [pytest.mark.benchmark]

TWELVE = Study(
    name="twelve",
    fleet_sizes=(80, 800, 8000),
    tier_mixes=("paper", "phones"),
    backhaul_mbps=(5.0, 50.0),
    server_ingress_mbps=(1000.0,),
)


def _study() -> tuple[list, float, float]:
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    cache = GroupingCache()
    rows = [run_point(point, cache) for point in study_points(TWELVE)]
    return rows, time.process_time() - started_cpu, time.perf_counter() - started_wall


def test_the_twelve_setting_study(benchmark):
    """All 12 settings plan, in under 60 CPU seconds."""
    rows, cpu_s, wall_s = benchmark.pedantic(_study, rounds=1, iterations=1)
    benchmark.extra_info.update(cpu_s=round(cpu_s, 2), wall_s=round(wall_s, 2), load=os.getloadavg()[0])
    print(f"\n12-setting study: {cpu_s:.1f} CPU-s, {wall_s:.1f} s wall, load average {os.getloadavg()[0]:.1f}")
    assert [row.status for row in rows].count("FEASIBLE") + [row.status for row in rows].count("OPTIMAL") == 12
    assert cpu_s < 60.0
