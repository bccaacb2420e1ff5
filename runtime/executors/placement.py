"""Where a distributed executor's devices train, and whether its workers fit: pure functions, no Ray.

Devices go to workers by their position in the fleet: device ``i`` to worker ``i mod W``. The fleet
never changes during a run, so a device stays on its worker across rounds and re-plans, and the
worker's frozen-prefix cache for it stays warm.

(M1) What one worker holds at its peak (bytes), for the devices ``D_w`` it owns, each trained at the
depths ``d in S_i`` the plans have given it so far::

    mem_w = overhead + mem(max depth)                          # (C4) of planner.costs, which holds
                                                              # the frozen model and one step's training
          + sum_{i in D_w} n_i * T * 16                        # tokenized rows: int64 ids and mask
          + sum_{i in D_w} sum_{d in S_i} n_i * T * H * 4      # cached float32 states entering layer L-d

with ``n_i`` device ``i``'s samples, ``T`` tokens per sample (``RunOptions.max_seq_len``) and ``H``
the model's hidden size. ``overhead`` is the worker process itself (Python, torch, transformers and
the Ray worker): :data:`WORKER_OVERHEAD_BYTES`, measured on this project's host.

(M2) Workers fit a cluster when each can be placed on a node with the CPUs and memory it asks for,
all at once; first-fit decreasing by memory decides it (exact for one node, a sufficient test for
several). Ray admits workers by these requests only; nothing stops a worker from growing past them,
which is why (M1) is checked before any work is dispatched, and again when a re-plan adds depths.

Examples
--------
>>> assign_devices(("a", "b", "c", "d", "e"), 2)
(('a', 'c', 'e'), ('b', 'd'))
>>> nodes = (NodeCapacity(cpus=2.0, memory_bytes=6),)
>>> place_workers((2, 3), cpus_per_worker=1.0, nodes=nodes)
[]
>>> issue = place_workers((3, 5), cpus_per_worker=1.0, nodes=nodes)[0]  # 5 fits, then 3 > the 1 B left
>>> issue.path, str(issue.got)
('ray.num_actors', '2 (actor 0 needs 3 B)')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from hierfedlora.planner.costs import peak_memory_bytes
from hierfedlora.planner.errors import Issue
from hierfedlora.planner.types import CostModel

__all__ = [
    "WORKER_OVERHEAD_BYTES",
    "NodeCapacity",
    "WorkerMemory",
    "assign_devices",
    "place_workers",
    "worker_memory",
]

WORKER_OVERHEAD_BYTES = 700 * 2**20
"""A worker process's own resident memory before it loads a model. Measured on this project's host (2026-12-06,
torch 2.13 CPU, Ray 2.55): a Python process that imported torch, transformers, Ray and hierfedlora held 280 MiB
(450 MiB once the default model was loaded). The 700 MiB default is a deliberate margin for Ray's connected core
worker and allocator growth, which were not measured separately."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeCapacity:
    """What one node offers workers: CPUs and memory (Ray's ``CPU`` and ``memory`` resources)."""

    cpus: float
    memory_bytes: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerMemory:
    """(M1) for one worker, term by term (bytes)."""

    num_devices: int
    depths: tuple[int, ...]
    overhead_bytes: int
    training_bytes: int
    rows_bytes: int
    cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.overhead_bytes + self.training_bytes + self.rows_bytes + self.cache_bytes

    def describe(self) -> str:
        """One line: the total and its terms, in MiB."""
        mib = 2**20
        return (
            f"{self.total_bytes / mib:.0f} MiB for {self.num_devices} devices at depths {list(self.depths)}: "
            f"process {self.overhead_bytes / mib:.0f}, model and training {self.training_bytes / mib:.0f}, "
            f"rows {self.rows_bytes / mib:.1f}, prefix cache {self.cache_bytes / mib:.1f}"
        )


def assign_devices(device_ids: Sequence[str], num_workers: int) -> tuple[tuple[str, ...], ...]:
    """The devices of each worker: device ``i`` (in ``device_ids``' order) goes to worker ``i mod num_workers``."""
    return tuple(tuple(device_ids[w::num_workers]) for w in range(num_workers))


def worker_memory(
    cost_model: CostModel,
    *,
    device_depths: Mapping[str, frozenset[int]],
    samples_of: Mapping[str, int],
    batch_size: int,
    seq_len: int,
    hidden_size: int,
    overhead_bytes: int = WORKER_OVERHEAD_BYTES,
) -> WorkerMemory:
    """(M1) for a worker owning the devices of ``device_depths`` (each with the depths it trains at)."""
    depths = sorted({d for ds in device_depths.values() for d in ds})
    training = peak_memory_bytes(cost_model, depth=max(depths), batch_size=batch_size) if depths else 0
    rows = sum(samples_of[device] for device in device_depths) * seq_len * 16
    cache = sum(samples_of[device] * len(ds) for device, ds in device_depths.items()) * seq_len * hidden_size * 4
    return WorkerMemory(
        num_devices=len(device_depths),
        depths=tuple(depths),
        overhead_bytes=overhead_bytes,
        training_bytes=training,
        rows_bytes=rows,
        cache_bytes=cache,
    )


def place_workers(
    requests_bytes: Sequence[float], *, cpus_per_worker: float, nodes: Sequence[NodeCapacity]
) -> list[Issue]:
    """(M2) Issues when workers asking for ``cpus_per_worker`` and ``requests_bytes`` each do not fit ``nodes``."""
    free = [[node.cpus, node.memory_bytes] for node in nodes]
    order = sorted(range(len(requests_bytes)), key=lambda w: -requests_bytes[w])
    for worker in order:
        fits = next((n for n in free if n[0] >= cpus_per_worker and n[1] >= requests_bytes[worker]), None)
        if fits is None:
            offered = "; ".join(f"{n.cpus:g} CPUs and {_size(n.memory_bytes)} free" for n in nodes) or "none"
            expected = f"actors that fit the cluster (each {cpus_per_worker:g} CPU and its memory; nodes: {offered})"
            got = f"{len(requests_bytes)} (actor {worker} needs {_size(requests_bytes[worker])})"
            return [Issue("ray.num_actors", expected, _Raw(got))]
        fits[0] -= cpus_per_worker
        fits[1] -= requests_bytes[worker]
    return []


class _Raw(str):
    """A ``got`` shown as written (no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def _size(num_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes:.0f} B"
