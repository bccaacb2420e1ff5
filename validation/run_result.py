"""What one run of an experiment is and leaves behind: the grid point (:class:`Setting`) and its
:class:`RunResult` (metrics and curve), as the harness writes them to ``<method>/result.json``."""

from __future__ import annotations

import dataclasses

__all__ = ["RunResult", "Setting", "alpha_name"]


def alpha_name(alpha: float | None) -> str:
    """``iid`` or ``alpha_0.5``: the folder and label of a non-IID level."""
    return "iid" if alpha is None else f"alpha_{alpha:g}"


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One point of a preset's grid. ``varied`` names the axes with more than one value in the preset
    (``"fleet"``, ``"mix"``): only those appear in names, so a one-fleet preset keeps short names."""

    alpha: float | None
    num_devices: int
    tier_mix: str
    seed: int
    varied: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The setting without its seed: ``alpha_0.5`` or ``alpha_0.5_n40_wifi`` when those axes vary."""
        parts = [alpha_name(self.alpha)]
        if "fleet" in self.varied:
            parts.append(f"n{self.num_devices}")
        if "mix" in self.varied:
            parts.append(self.tier_mix)
        return "_".join(parts)

    @property
    def name(self) -> str:
        """The folder of the setting: its label and seed."""
        return f"{self.label}_seed{self.seed}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One method on one setting: the metrics defined in :mod:`hierfedlora.validation.experiments`, and the curve.

    ``num_devices`` and ``tier_mix`` name the setting's fleet (``None`` in results written before
    the grid had those axes). ``sim_time_s`` / ``accuracy`` are the round ends; ``observed_sim_time_s``
    / ``observed_accuracy`` every evaluation of the global model in time order, round ends and the
    observations after intra-group rounds (``planner.intra_evals``), when the preset asked for them
    (else empty). ``time_to_target_s`` is ``None`` until a relative target is resolved.
    ``resolved_rule`` is the aggregation rule a ``NAME@best`` method ran under in this setting
    (:mod:`hierfedlora.validation.method_rules`; ``None`` for a method with an explicit rule).
    """

    method: str
    alpha: float | None
    seed: int
    plan_id: str
    rounds: int
    time_budget_s: float
    final_accuracy: float
    time_to_target_s: float | None
    traffic_bytes: int
    wall_time_s: float
    replans: int
    sim_time_s: tuple[float, ...]
    accuracy: tuple[float, ...]
    num_devices: int | None = None
    tier_mix: str | None = None
    observed_sim_time_s: tuple[float, ...] = ()
    observed_accuracy: tuple[float, ...] = ()
    resolved_rule: str | None = None
