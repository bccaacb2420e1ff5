"""Shared fixtures: a toy cost model shaped like the default model's, and an 8-device fleet."""

from __future__ import annotations

import pytest

from hierfedlora.planner.types import CostModel, DeviceProfile
from tests.factories import make_cost_model


@pytest.fixture
def cost_model() -> CostModel:
    return make_cost_model()


@pytest.fixture
def tiny_fleet() -> tuple[DeviceProfile, ...]:
    """Eight devices, four classes, each device dominated by one or two classes."""
    counts = [(30, 0, 0, 2), (0, 30, 2, 0), (2, 0, 30, 0), (0, 2, 0, 30),
              (15, 15, 0, 0), (0, 0, 15, 15), (15, 0, 15, 0), (0, 15, 0, 15)]
    scales = [1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0]
    return tuple(
        DeviceProfile(device_id=f"d{i}", label_counts=c, compute_scale=s, memory_bytes=2**31,
                      uplink_mbps=20.0, downlink_mbps=50.0)
        for i, (c, s) in enumerate(zip(counts, scales, strict=True))
    )
