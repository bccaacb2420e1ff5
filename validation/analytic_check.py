"""How far the analytic cost model (``planner.analytic_costs``) is from a measured one, per layer and per depth.

:func:`compare_cost_models` lines a measured :class:`CostModel` (``hierfedlora profile``) up with
the analytic one of the same model, batch and sequence length on this host's measured tier
(``models.host_tier``): per-layer forward and training (backward) seconds, the (C1) local step at
every depth, and the byte counts. Errors are ``predicted / measured - 1``.
"""

from __future__ import annotations

import dataclasses

from hierfedlora.planner import costs
from hierfedlora.planner.types import CostModel

__all__ = ["CostComparison", "compare_cost_models"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CostComparison:
    """Relative errors (predicted / measured - 1) of an analytic cost model against a measured one."""

    forward_error: tuple[float, ...]
    backward_error: tuple[float, ...]
    step_error: tuple[float, ...]  # (C1) at depth 1..L
    adapter_bytes_error: float
    head_bytes_error: float
    base_model_bytes_error: float
    activation_bytes_error: float

    @property
    def worst_step_error(self) -> float:
        """The largest absolute (C1) step error over depths."""
        return max(abs(e) for e in self.step_error)


def _error(predicted: float, measured: float) -> float:
    return predicted / measured - 1.0


def compare_cost_models(measured: CostModel, analytic: CostModel) -> CostComparison:
    """Line ``analytic`` up with ``measured`` (same model, batch and sequence length)."""
    depths = range(1, measured.num_layers + 1)
    step = [
        _error(
            costs.step_time_s(analytic, compute_scale=1.0, depth=d, batch_size=measured.batch_size),
            costs.step_time_s(measured, compute_scale=1.0, depth=d, batch_size=measured.batch_size),
        )
        for d in depths
    ]
    return CostComparison(
        forward_error=tuple(
            _error(a, m) for a, m in zip(analytic.layer_forward_s, measured.layer_forward_s, strict=True)
        ),
        backward_error=tuple(
            _error(a, m) for a, m in zip(analytic.layer_backward_s, measured.layer_backward_s, strict=True)
        ),
        step_error=tuple(step),
        adapter_bytes_error=_error(analytic.adapter_bytes_per_layer, measured.adapter_bytes_per_layer),
        head_bytes_error=_error(analytic.head_bytes, measured.head_bytes),
        base_model_bytes_error=_error(analytic.base_model_bytes, measured.base_model_bytes),
        activation_bytes_error=_error(
            analytic.activation_bytes_per_sample_per_layer, measured.activation_bytes_per_sample_per_layer
        ),
    )
