"""The field rules of :class:`~hierfedlora.validation.experiment_presets.ExperimentPreset`: what each field
of a preset (built in or read from JSON) must be, checked field by field before anything runs."""

from __future__ import annotations

from hierfedlora.planner.fleets.tiers import PRESETS as TIER_MIXES
from hierfedlora.planner.rules import (
    ANY_STRING,
    FINITE_NON_NEGATIVE,
    FINITE_POSITIVE,
    POSITIVE_INT,
    Rule,
)
from hierfedlora.planner.types import ConvergenceParams
from hierfedlora.validation.baseline_settings import BaselineSettings

__all__ = ["MAX_FLEET_SIZE", "PRESET_RULES"]


def _distinct(value: tuple[object, ...]) -> bool:
    """No value twice, for any JSON scalars (checked after the element types, so all are hashable)."""
    return len(set(value)) == len(value)


def _tuple_of(kind: type, what: str, allowed: tuple[object, ...] | None = None, maximum: int | None = None) -> Rule:
    def ok(value: object) -> bool:
        return (
            isinstance(value, tuple)
            and len(value) > 0
            and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
            and _distinct(value)
            and all(allowed is None or v in allowed for v in value)
            and all(not isinstance(v, int) or 0 < v <= (maximum or v) for v in value)
        )

    return Rule(f"a non-empty list of distinct {what}", ok, ((), (0,), ([1],), 1))


MAX_FLEET_SIZE = 10_000
"""Most devices a preset's fleet may have (the paper's largest fleet is 80)."""


PRESET_RULES: dict[str, Rule] = {
    "fleet_sizes": _tuple_of(int, f"device counts (integers 1..{MAX_FLEET_SIZE})", maximum=MAX_FLEET_SIZE),
    "tier_mixes": _tuple_of(str, f"tier mix names from {sorted(TIER_MIXES)}", tuple(TIER_MIXES)),
    "seeds": Rule(
        "a non-empty list of distinct integers >= 0",
        lambda v: (
            isinstance(v, tuple)
            and len(v) > 0
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in v)
            and _distinct(v)
        ),
        ((), (-1,), ([0],)),
    ),
    "alphas": Rule(
        "a non-empty list of distinct Dirichlet concentrations in (0, 1e6] (null for IID)",
        lambda v: (
            isinstance(v, tuple)
            and len(v) > 0
            and all(a is None or (isinstance(a, (int, float)) and not isinstance(a, bool) and 0 < a <= 1e6) for a in v)
            and _distinct(v)
        ),
        ((), (0.0,), ([1.0],)),
    ),
    "num_groups": POSITIVE_INT,
    "samples_per_device": POSITIVE_INT,
    "local_steps": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "max_seq_len": POSITIVE_INT,
    "learning_rate": FINITE_POSITIVE,
    "eval_samples": POSITIVE_INT,
    "budget_fedlora_rounds": FINITE_POSITIVE,
    "max_rounds": POSITIVE_INT,
    "target_accuracy": Rule(
        "a number in (0, 1) (null only with target_relative)",
        lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1),
        (0.0, 1.5),
    ),
    "target_relative": Rule(
        "a number in (0, 1] or null",
        lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1),
        (0.0, 1.5, "0.9"),
    ),
    "evaluate_intra_rounds": Rule("true or false", lambda v: isinstance(v, bool), (1, "yes")),
    "probe_after_round": POSITIVE_INT,
    "probe_groups": POSITIVE_INT,
    "selfcal_prior_weight": FINITE_NON_NEGATIVE,
    "speed_error_sigma": FINITE_NON_NEGATIVE,
    "replan_every": POSITIVE_INT,
    "absent_rounds": POSITIVE_INT,
    "plan_time_limit_s": FINITE_POSITIVE,
    "optimizer": Rule("'adamw' or 'sgd'", lambda v: v in ("adamw", "sgd"), ("adam",)),
    "data": Rule(
        "'wordnet', 'janeausten', or the path of a .csv/.jsonl file or of a folder of them",
        lambda v: isinstance(v, str) and bool(v.strip()),
        ("", 3),
    ),
    "name": Rule(
        "a non-empty name of letters, digits, '.', '_' or '-' (it names folders)",
        lambda v: isinstance(v, str) and 0 < len(v) <= 100 and all(c.isalnum() or c in "._-" for c in v),
        ("", "../x", 3),
    ),
    "description": ANY_STRING,
    "methods": _tuple_of(str, "method names"),
    "single_seed_alphas": Rule(
        "a list of Dirichlet concentrations from alphas (null for IID)",
        lambda v: (
            isinstance(v, tuple)
            and all(a is None or (isinstance(a, (int, float)) and not isinstance(a, bool)) for a in v)
        ),
        (1, ([1.0],)),
    ),
    "tuning_notes": Rule(
        "a list of strings", lambda v: isinstance(v, tuple) and all(isinstance(n, str) for n in v), (3, (1,))
    ),
    "baseline": Rule("an object (BaselineSettings)", lambda v: isinstance(v, BaselineSettings), ({},)),
    "convergence": Rule("an object (ConvergenceParams)", lambda v: isinstance(v, ConvergenceParams), ({},)),
}
