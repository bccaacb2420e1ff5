"""What the simulated clock returns: one group's part of a global round (:class:`GroupTiming`) and the round
(:class:`RoundTiming`), and the bytes one exchange moves under the run's aggregation rule (``planner.costs`` (C9)).

``runtime.clock`` computes them, (K1)-(K3) there and the faulty rounds (K4) in ``runtime.clock_faults``.
"""

from __future__ import annotations

import dataclasses

from hierfedlora.planner.outcomes import Group
from hierfedlora.planner.rule_costs import group_exchange_bytes
from hierfedlora.planner.types import CostModel

__all__ = ["GroupTiming", "RoundTiming"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupTiming:
    """One group's part of a global round.

    ``intra_round_s`` holds one entry per intra-group round (all equal without noise);
    ``group_s`` is their total, ``tau * t`` without noise. Bytes are per global round, all devices.
    ``device_step_s`` maps each member to the mean local-step seconds it was charged this round;
    ``missed[r]`` the members that missed intra round ``r``'s deadline (one entry per intra round).
    """

    group_id: int
    intra_round_s: tuple[float, ...]
    group_s: float
    upload_bytes: int
    download_bytes: int
    device_step_s: dict[str, float] = dataclasses.field(default_factory=dict)
    missed: tuple[tuple[str, ...], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RoundTiming:
    """A global round: every group's timing, the global aggregation, and the round (K1 or K2)."""

    groups: tuple[GroupTiming, ...]
    global_aggregation_s: float
    round_s: float

    @property
    def device_step_s(self) -> dict[str, float]:
        """Mean simulated local-step seconds of every device in the round."""
        return {device: seconds for g in self.groups for device, seconds in g.device_step_s.items()}

    @property
    def upload_bytes(self) -> int:
        """Bytes all devices send in the round."""
        return sum(g.upload_bytes for g in self.groups)

    @property
    def download_bytes(self) -> int:
        """Bytes all devices receive in the round."""
        return sum(g.download_bytes for g in self.groups)


def _rule_bytes(
    cost_model: CostModel, group: Group, aggregation: str, num_inputs: int, dense_bytes_per_layer: int | None
) -> tuple[int, int]:
    """(C9) for one group: upload and download bytes of one exchange (as the planner prices it)."""
    return group_exchange_bytes(
        cost_model,
        group,
        aggregation=aggregation,
        num_inputs=num_inputs,
        dense_bytes_per_layer=dense_bytes_per_layer,
    )
