"""Device tiers from published figures: compute speed, memory and link bandwidth of real edge devices.

A :class:`DeviceTier` gives ranges; :func:`draw_device` draws one device inside them, log-uniformly
(a device class spans a factor, not a fixed step, of speed or bandwidth). Presets mix tiers:
``"paper"`` (Jetson TX2 / Xavier NX / AGX Orin boards, like the HierFedLoRA testbed, Liu et al.
2025, arXiv 2503.21213), ``"phones"`` and ``"mixed"``. A what-if can put every device on one link
class (``network="4g"``, ``"5g"`` or ``"wifi"``).

How ``compute_scale`` is derived (an approximation, not a measurement of these devices).
``compute_scale`` multiplies the step time the host measured (the development host: a 2-core x86
CPU). We compare sustained training throughput::

    compute_scale = HOST_TRAIN_GFLOPS / device_train_gflops

* Host: a step at depth 6 (batch 16, seq 64) takes about 0.38 s (measured by ``hierfedlora profile``). MiniLM-L6's
  six layers hold about 10.6 M weights (hidden 384, FFN 1536), so a step costs about
  2 x 10.6e6 x 1024 tokens = 22 GFLOP forward and as much again backward (input gradients; the
  frozen weights get none): about 45 GFLOP in 0.38 s, so ``HOST_TRAIN_GFLOPS = 110`` (our estimate).
* Jetson boards train on their GPU in FP32: device throughput = peak FP32 (CUDA cores x 2 x clock,
  from the data sheets, at the fastest and the slowest power mode) x a utilisation between
  ``GPU_TRAIN_UTILISATION`` = 0.15 and 0.35. The utilisation is an ASSUMPTION: small-batch
  training on these boards is memory-bound (FLEdge, Woisetschlaeger et al. 2024, arXiv 2306.05172),
  so it reaches a fraction of peak; the fastest device pairs the fast mode with high utilisation.
* Phones train on their CPU: 15-30 GFLOP/s measured for training kernels on Snapdragon 8-series
  CPUs (Das et al. 2022, "Enabling On-Device Smartphone GPU based Training: Lessons Learned",
  arXiv 2202.10100; their optimised mobile GPU kernels reached 40-70 GFLOP/s, yet whole training
  steps still ran slower on the GPU because of memory traffic).

Examples
--------
>>> import numpy as np
>>> draw = draw_device(TIERS["jetson-agx-orin"], np.random.default_rng(0))
>>> lo, hi = TIERS["jetson-agx-orin"].compute_scale
>>> lo <= draw.compute_scale <= hi
True
>>> sorted(resolve_tier_mix("paper"))
['jetson-agx-orin', 'jetson-tx2', 'jetson-xavier-nx']
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from hierfedlora.planner.errors import InvalidInputError, Issue

__all__ = [
    "GPU_TRAIN_UTILISATION",
    "HOST_TRAIN_GFLOPS",
    "NETWORKS",
    "PRESETS",
    "TIERS",
    "DeviceDraw",
    "DeviceTier",
    "LinkClass",
    "assign_tiers",
    "draw_device",
    "resolve_tier_mix",
]

GIB = 2**30
HOST_TRAIN_GFLOPS = 110.0
"""Sustained training throughput of the profiling host (our estimate; derivation in the module docstring)."""
GPU_TRAIN_UTILISATION = (0.15, 0.35)
"""Share of FP32 peak a small-batch training step sustains on a Jetson GPU. ASSUMPTION (see above)."""


def _range(low: float, high: float) -> tuple[float, float]:
    return (float(low), float(high))


def _positive_range(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value)
        and value[0] <= value[1]
    )


_RANGE = "a (low, high) pair of finite numbers with 0 < low <= high"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LinkClass:
    """A kind of access link: uplink and downlink ranges (megabits per second) and their sources."""

    name: str
    uplink_mbps: tuple[float, float]
    downlink_mbps: tuple[float, float]
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        issues = [
            Issue(f, _RANGE, getattr(self, f))
            for f in ("uplink_mbps", "downlink_mbps")
            if not _positive_range(getattr(self, f))
        ]
        if issues:
            raise InvalidInputError(issues)


# The median of a log-uniform draw is the range's geometric mean; each range is set so that the
# geometric mean sits near the published median, and the ends span the reports' spread.
NETWORKS: Mapping[str, LinkClass] = types.MappingProxyType(
    {
        "4g": LinkClass(
            name="4g",
            downlink_mbps=_range(8, 50),  # geometric mean 20
            uplink_mbps=_range(2, 15),  # geometric mean 5.5
            sources=(
                "Opensignal, The State of LTE, Nov 2016: global average 4G download 17.4 Mbps (India 6.4, USA 14)",
                "Opensignal, The State of LTE, Feb 2018: the fastest countries' 4G plateaus near 45 Mbps",
                "Ookla, 5G at Maha Kumbh, Mar 2025: India 4G median download 13.38-21.68 Mbps",
                "Ookla (via RCR Wireless / Radio World), H1 2018: US mobile mean upload 8.63 Mbps",
                "ASSUMPTION: uplink range 2-15 Mbps around that upload figure",
            ),
        ),
        "5g": LinkClass(
            name="5g",
            downlink_mbps=_range(60, 400),  # geometric mean 155
            uplink_mbps=_range(10, 45),  # geometric mean 21
            sources=(
                "Ookla, Growing and Slowing: The State of 5G Worldwide in 2021: Q3 2021 global median 5G "
                "download 166.13 Mbps, upload 21.08 Mbps (Q3 2020: 206.22 / 29.52)",
                "Ookla, The State of Worldwide Connectivity in 2023: Q3 2023 global median 5G download 203.04 Mbps",
                "Ookla, 5G at Maha Kumbh, Mar 2025: India 5G median download 151.09-259.67 Mbps under load",
            ),
        ),
        "wifi": LinkClass(
            name="wifi",
            downlink_mbps=_range(25, 300),  # geometric mean 87
            uplink_mbps=_range(10, 200),  # geometric mean 45
            sources=(
                "Ookla, Speedtest Global Index, Aug 2024 (via DataHub): global median fixed broadband "
                "93.99 Mbps download, 48.36 Mbps upload",
                "Ookla, The State of Worldwide Connectivity in 2023: Q3 2023 fixed median 83.95 / 38.32 Mbps",
                "Opensignal, The State of Wifi vs Mobile Network Experience as 5G Arrives, Nov 2018: Wi-Fi is "
                "often slower than the line behind it (mobile beat Wi-Fi in 33 of 80 countries)",
                "ASSUMPTION: Wi-Fi to a device spans about 0.3x-3x the fixed-line median",
            ),
        ),
    }
)


def _jetson_scale(peak_slow_gflops: float, peak_fast_gflops: float) -> tuple[float, float]:
    """compute_scale range of a Jetson: fast mode at high utilisation .. slow mode at low utilisation."""
    low_util, high_util = GPU_TRAIN_UTILISATION
    return (HOST_TRAIN_GFLOPS / (peak_fast_gflops * high_util), HOST_TRAIN_GFLOPS / (peak_slow_gflops * low_util))


def _fp32_gflops(cuda_cores: int, clock_ghz: float) -> float:
    return 2.0 * cuda_cores * clock_ghz  # one fused multiply-add per core per cycle


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceTier:
    """A class of devices: ranges of speed (x the host's step time), memory for training, link class.

    ``network`` names the default :data:`NETWORKS` entry; ``sources`` cite every figure (or say
    ASSUMPTION where none was found).
    """

    name: str
    description: str
    compute_scale: tuple[float, float]
    memory_bytes: tuple[int, int]
    network: str
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        issues = [
            Issue(f, _RANGE, getattr(self, f))
            for f in ("compute_scale", "memory_bytes")
            if not _positive_range(getattr(self, f))
        ]
        if self.network not in NETWORKS:
            issues.append(Issue("network", f"one of {', '.join(map(repr, NETWORKS))}", self.network))
        if issues:
            raise InvalidInputError(issues)


_JETSON_MEMORY = "ASSUMPTION: the OS, desktop and CUDA context keep about 2 GB of the shared memory"

TIERS: Mapping[str, DeviceTier] = types.MappingProxyType(
    {
        "jetson-tx2": DeviceTier(
            name="jetson-tx2",
            description="NVIDIA Jetson TX2 (256-core Pascal GPU, 8 GB LPDDR4 shared)",
            # 256 cores at 1.30 GHz (Max-N) = 666 GFLOP/s; 0.85 GHz (Max-Q) = 435 GFLOP/s -> 0.47..1.69
            compute_scale=_jetson_scale(_fp32_gflops(256, 0.85), _fp32_gflops(256, 1.30)),
            memory_bytes=(int(4.5 * GIB), 6 * GIB),
            network="wifi",
            sources=(
                "NVIDIA Jetson TX2 System-on-Module data sheet: 256-core Pascal GPU, 8 GB 128-bit LPDDR4",
                "JetsonHacks, NVPModel - NVIDIA Jetson TX2 Development Kit, 2017 (and NVIDIA DRIVE Linux SDK "
                "guide, MaxQ/MaxP table): GPU max 1.30 GHz in Max-N, 0.85 GHz in Max-Q",
                _JETSON_MEMORY,
                "ASSUMPTION: boards on a WLAN, as in a lab testbed",
            ),
        ),
        "jetson-xavier-nx": DeviceTier(
            name="jetson-xavier-nx",
            description="NVIDIA Jetson Xavier NX (384-core Volta GPU, 8 GB LPDDR4x shared)",
            # 384 cores at 1.1 GHz = 845 GFLOP/s; a low-power mode assumed at TX2's Max-Q ratio (0.65) -> 0.37..1.33
            compute_scale=_jetson_scale(_fp32_gflops(384, 1.1 * 0.85 / 1.30), _fp32_gflops(384, 1.1)),
            memory_bytes=(int(4.5 * GIB), 6 * GIB),
            network="wifi",
            sources=(
                "NVIDIA Jetson Xavier NX data sheet DA-09366-001: 384 CUDA cores, 48 Tensor cores, GPU max "
                "1100 MHz, 8 GB 128-bit LPDDR4x, up to 21 TOPS (INT8)",
                "ASSUMPTION: its low-power modes cap the GPU clock by the same ratio as TX2's Max-Q (0.85/1.30)",
                _JETSON_MEMORY,
                "ASSUMPTION: boards on a WLAN, as in a lab testbed",
            ),
        ),
        "jetson-agx-orin": DeviceTier(
            name="jetson-agx-orin",
            description="NVIDIA Jetson AGX Orin 32/64 GB (up to 2048-core Ampere GPU)",
            # 5.3 TFLOP/s FP32 at MAXN; the 15 W mode assumed at 0.3x of it -> 0.06..0.46
            compute_scale=_jetson_scale(5300.0 * 0.3, 5300.0),
            memory_bytes=(24 * GIB, 56 * GIB),
            network="wifi",
            sources=(
                "NVIDIA Jetson AGX Orin Series Technical Brief: 2048 CUDA cores, 5.3 FP32 TFLOPS (64 GB module)",
                "NVIDIA developer forum, Maximum power consumption bounds for Orin AGX, 2025: 32 GB and 64 GB "
                "modules; GPU rail 40.4 W at MAXN vs 5.2 W in the 15 W mode under a stress test",
                "ASSUMPTION: the 15 W mode sustains 0.3x of MAXN GPU throughput",
                "ASSUMPTION: about 8 GB of the 32/64 GB kept by the OS and CUDA context",
                "ASSUMPTION: boards on a WLAN, as in a lab testbed",
            ),
        ),
        "phone-flagship": DeviceTier(
            name="phone-flagship",
            description="Flagship phone (Snapdragon 8-series class), training on its CPU",
            compute_scale=(HOST_TRAIN_GFLOPS / 30.0, HOST_TRAIN_GFLOPS / 15.0),  # 3.7..7.3
            memory_bytes=(int(1.5 * GIB), 4 * GIB),
            network="5g",
            sources=(
                "Das et al., Enabling On-Device Smartphone GPU based Training: Lessons Learned, 2022 "
                "(arXiv 2202.10100): 15-30 GFLOP/s for training on Snapdragon 8-series CPUs",
                "ASSUMPTION: one app can hold 1.5-4 GiB for training on an 8-12 GB phone",
            ),
        ),
        "phone-midrange": DeviceTier(
            name="phone-midrange",
            description="Mid-range phone, training on its CPU",
            compute_scale=(HOST_TRAIN_GFLOPS / 15.0, HOST_TRAIN_GFLOPS / 7.5),  # 7.3..14.7
            memory_bytes=(int(0.75 * GIB), 2 * GIB),
            network="4g",
            sources=(
                "Das et al. 2022 (arXiv 2202.10100): 15-30 GFLOP/s on flagship CPUs; ASSUMPTION: mid-range "
                "SoCs sustain half of that (7.5-15 GFLOP/s)",
                "ASSUMPTION: one app can hold 0.75-2 GiB for training on a 4-6 GB phone",
            ),
        ),
        "laptop": DeviceTier(
            name="laptop",
            description="Laptop, training on a 4-8 core x86 CPU",
            compute_scale=(0.25, 1.0),
            memory_bytes=(4 * GIB, 12 * GIB),
            network="wifi",
            sources=(
                "ASSUMPTION: cores like the host's; 2-4x its 2 cores, the slow end thermally throttled",
                "ASSUMPTION: 4-12 GiB free for training on an 8-16 GB laptop",
            ),
        ),
    }
)

# Shares of each tier; the paper mixes the three Jetson boards, in shares it does not fix (ASSUMPTION).
PRESETS: Mapping[str, Mapping[str, float]] = types.MappingProxyType(
    {
        "paper": types.MappingProxyType({"jetson-tx2": 0.4, "jetson-xavier-nx": 0.4, "jetson-agx-orin": 0.2}),
        "phones": types.MappingProxyType({"phone-flagship": 0.4, "phone-midrange": 0.6}),
        "mixed": types.MappingProxyType(
            {
                "jetson-tx2": 0.15,
                "jetson-xavier-nx": 0.15,
                "jetson-agx-orin": 0.1,
                "phone-flagship": 0.2,
                "phone-midrange": 0.25,
                "laptop": 0.15,
            }
        ),
    }
)


class DeviceDraw(NamedTuple):
    """One drawn device (a named tuple, so ``scale, memory, up, down = draw_device(...)`` works)."""

    compute_scale: float
    memory_bytes: int
    uplink_mbps: float
    downlink_mbps: float


def _log_uniform(low: float, high: float, quantile: float) -> float:
    return float(low * (high / low) ** quantile)


def draw_device(tier: DeviceTier, rng: np.random.Generator, *, network: str | None = None) -> DeviceDraw:
    """Draw one device of ``tier``: each quantity log-uniform within its range.

    The uplink and downlink share one draw (a device with a good downlink has a good uplink: same
    radio, same place). ``network`` puts the device on another :data:`NETWORKS` link class.

    Raises
    ------
    InvalidInputError
        If ``network`` is not ``None`` or a key of :data:`NETWORKS`.
    """
    if network is not None and network not in NETWORKS:
        raise InvalidInputError([_unknown("network", network, NETWORKS)])
    link = NETWORKS[network or tier.network]
    speed_q, memory_q, link_q = rng.random(3)
    memory = _log_uniform(*tier.memory_bytes, memory_q)
    return DeviceDraw(
        compute_scale=_log_uniform(*tier.compute_scale, speed_q),
        memory_bytes=int(memory) // 2**20 * 2**20,  # whole MiB
        uplink_mbps=_log_uniform(*link.uplink_mbps, link_q),
        downlink_mbps=_log_uniform(*link.downlink_mbps, link_q),
    )


def _unknown(path: str, value: object, known: Mapping[str, object]) -> Issue:
    close = difflib.get_close_matches(str(value), list(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else ""
    return Issue(path, f"one of {', '.join(map(repr, known))}", value, hint)


def resolve_tier_mix(tier_mix: str | Mapping[str, float]) -> dict[str, float]:
    """A preset name or a mapping of tier name to weight, as shares that sum to 1.

    Raises
    ------
    InvalidInputError
        If a preset or tier name is unknown (with a "did you mean"), a weight is not a finite
        number >= 0, or all weights are 0.
    """
    if isinstance(tier_mix, str):
        if tier_mix not in PRESETS:
            raise InvalidInputError([_unknown("tier_mix", tier_mix, PRESETS)])
        tier_mix = PRESETS[tier_mix]
    if not isinstance(tier_mix, Mapping) or not tier_mix:
        raise InvalidInputError(
            [Issue("tier_mix", "a preset name or a non-empty mapping of tier name to weight", tier_mix)]
        )
    issues = [_unknown(f"tier_mix.{name}", name, TIERS) for name in tier_mix if name not in TIERS]
    for name, weight in tier_mix.items():
        if isinstance(weight, bool) or not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
            issues.append(Issue(f"tier_mix.{name}", "a finite weight >= 0", weight))
    if not issues and sum(tier_mix.values()) <= 0:
        issues.append(Issue("tier_mix", "weights with a positive sum", dict(tier_mix)))
    if issues:
        raise InvalidInputError(issues)
    total = float(sum(tier_mix.values()))
    return {name: float(weight) / total for name, weight in tier_mix.items()}


def assign_tiers(num_devices: int, tier_mix: str | Mapping[str, float], rng: np.random.Generator) -> tuple[str, ...]:
    """Tier names for ``num_devices`` devices, in the mix's shares, in a seeded random order.

    Counts are apportioned by largest remainder (ties to the tier listed first), so 10 devices of
    ``{"a": 0.25, "b": 0.75}`` are 3 ``a`` and 7 ``b`` (2.5 and 7.5 round by the listed order);
    the order is then shuffled so tiers do not follow device positions.

    Examples
    --------
    >>> sorted(assign_tiers(4, {"laptop": 1, "phone-flagship": 1}, np.random.default_rng(0)))
    ['laptop', 'laptop', 'phone-flagship', 'phone-flagship']
    """
    if isinstance(num_devices, bool) or not (isinstance(num_devices, int) and num_devices >= 1):
        raise InvalidInputError([Issue("num_devices", "an integer >= 1", num_devices)])
    shares = resolve_tier_mix(tier_mix)
    names = list(shares)
    exact = np.array([shares[name] * num_devices for name in names])
    counts = np.floor(exact).astype(np.int64)
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: num_devices - int(counts.sum())]:
        counts[i] += 1
    tiers = np.repeat(np.array(names, dtype=object), counts)
    return tuple(str(name) for name in tiers[rng.permutation(num_devices)])
