"""The report's section on aggregation rules: which ``method@rule`` wins per setting, and by how much.

Pure functions of :class:`~hierfedlora.validation.experiment_presets.RunResult` s. Per setting (the grid
point without its seed), each method's final accuracy is averaged over seeds; the section names the
winning combination and its margin over the runner-up, HierFedLoRA's best rule and its margin over
HierFedLoRA's next best rule and over FedLoRA's best rule, and the rule each ``NAME@best`` method
resolved to, per seed (:mod:`hierfedlora.validation.method_rules`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from hierfedlora.validation.experiment_presets import RunResult, Setting
from hierfedlora.validation.method_rules import REFERENCE_METHOD, RULE_SEPARATOR, is_best, split_method

__all__ = ["combination", "rule_lines"]


def combination(method: str) -> str:
    """``method`` with its rule always written: ``hierfedlora`` -> ``hierfedlora@fedavg``."""
    if is_best(method):
        return method
    name, rule = split_method(method)
    return f"{name}{RULE_SEPARATOR}{rule}"


def _points(a: float, b: float) -> str:
    return f"{100 * (a - b):+.1f} points"


def _best_of(acc: dict[str, float], name: str) -> list[str]:
    """``name``'s explicit-rule methods, best mean accuracy first (stable: preset order on ties)."""
    mine = [m for m in acc if split_method(m)[0] == name and not is_best(m)]
    return sorted(mine, key=lambda m: -acc[m])


def _setting_line(label: str, runs: Sequence[RunResult]) -> str:
    by_method: dict[str, list[RunResult]] = {}
    for r in runs:
        by_method.setdefault(r.method, []).append(r)
    acc = {m: statistics.fmean(r.final_accuracy for r in rs) for m, rs in by_method.items()}
    ranked = sorted(acc, key=lambda m: -acc[m])
    text = f"- {label}: the winner is `{combination(ranked[0])}` at {100 * acc[ranked[0]]:.1f}%"
    if len(ranked) > 1:
        text += f", {_points(acc[ranked[0]], acc[ranked[1]])} over the next, `{combination(ranked[1])}`"
    ours, theirs = _best_of(acc, REFERENCE_METHOD), _best_of(acc, "fedlora")
    if ours:
        text += f"; HierFedLoRA's best rule is `{split_method(ours[0])[1]}` ({100 * acc[ours[0]]:.1f}%)"
        if len(ours) > 1:
            text += f", {_points(acc[ours[0]], acc[ours[1]])} over its next best, `{split_method(ours[1])[1]}`"
        if theirs:
            text += (
                f", {_points(acc[ours[0]], acc[theirs[0]])} over FedLoRA's best rule, `{split_method(theirs[0])[1]}` "
                f"({100 * acc[theirs[0]]:.1f}%)"
            )
    resolved = sorted({(r.seed, r.resolved_rule) for r in runs if is_best(r.method) and r.resolved_rule})
    if resolved:
        text += "; `@best` resolved to " + ", ".join(f"`{rule}` (seed {seed})" for seed, rule in resolved)
    return text + "."


def rule_lines(results: Sequence[RunResult]) -> list[str]:
    """The section (ending in a blank line), or nothing when no run names a rule (every method under FedAvg)."""
    if not any(RULE_SEPARATOR in r.method for r in results):
        return []
    varied = tuple(
        axis
        for axis, values in (("fleet", {r.num_devices for r in results}), ("mix", {r.tier_mix for r in results}))
        if len(values) > 1
    )
    lines = [
        "## Aggregation rules (mean final accuracy over seeds; `NAME@best` ran under the rule with which "
        "HierFedLoRA reached the highest final accuracy in the same setting and seed, a tie to the earlier rule)",
        "",
    ]
    settings: dict[tuple[object, ...], list[RunResult]] = {}
    for r in results:
        settings.setdefault((r.alpha, r.num_devices, r.tier_mix), []).append(r)
    for (alpha, devices, mix), runs in settings.items():
        label = Setting(alpha, devices or 0, mix or "", 0, varied).label  # type: ignore[arg-type]
        lines.append(_setting_line(label, runs))
    return [*lines, ""]
