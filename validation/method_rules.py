"""Experiment methods under an aggregation rule: ``NAME@RULE``, and ``NAME@best``, resolved per setting.

A preset method ``hierfedlora@fedex`` runs HierFedLoRA's plan under FedEx-LoRA; a bare name runs FedAvg.
``NAME@best`` is the second stage of a two-stage design fixed before any run: in each setting (same
non-IID level, fleet and seed), it runs NAME under the rule with which the plain HierFedLoRA method
(:data:`REFERENCE_METHOD`, ``hierfedlora`` = FedAvg, ``hierfedlora@ffa``, ...) reached the highest final
accuracy in that setting; a tie goes to the rule that comes first in
:data:`~hierfedlora.planner.costs.AGGREGATION_RULES`. So a baseline runs under HierFedLoRA's best rule and
no method gets an advantage the others are denied. The harness runs a setting's explicit-rule methods
first and resolves ``@best`` from their finished results (:func:`resolve_best_rule`); a preset with
``@best`` methods needs HierFedLoRA under at least two rules (:func:`best_rule_issue`).

Examples
--------
>>> split_method("hierfedlora@flora"), split_method("fedlora"), is_best("hierfavg@best")
(('hierfedlora', 'flora'), ('fedlora', 'fedavg'), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hierfedlora.planner.costs import AGGREGATION_RULES
from hierfedlora.planner.errors import Issue

if TYPE_CHECKING:
    from hierfedlora.validation.experiment_presets import RunResult

__all__ = [
    "BEST_RULE",
    "REFERENCE_METHOD",
    "RULE_SEPARATOR",
    "best_rule_issue",
    "is_best",
    "reference_rules",
    "resolve_best_rule",
    "split_method",
    "stage_order",
]

RULE_SEPARATOR = "@"
"""``method@rule`` runs ``method`` under aggregation rule ``rule`` (``runtime.aggregation_rules``)."""
BEST_RULE = "best"
"""``method@best``: the rule under which :data:`REFERENCE_METHOD` did best in the same setting."""
REFERENCE_METHOD = "hierfedlora"
"""The method whose best rule ``@best`` takes."""


def split_method(method: str) -> tuple[str, str]:
    """The method and its aggregation rule: ``hierfedlora@fedex`` -> ``("hierfedlora", "fedex")``; a bare
    name runs FedAvg; ``hierfavg@best`` -> ``("hierfavg", "best")`` (resolved per setting by the harness)."""
    name, _, rule = method.partition(RULE_SEPARATOR)
    return name, rule or "fedavg"


def is_best(method: str) -> bool:
    """Whether ``method`` is written ``NAME@best``."""
    return method.endswith(RULE_SEPARATOR + BEST_RULE) and split_method(method)[1] == BEST_RULE


def reference_rules(methods: Sequence[str]) -> tuple[str, ...]:
    """The explicit rules under which ``methods`` run :data:`REFERENCE_METHOD`, in AGGREGATION_RULES order."""
    present = {split_method(m)[1] for m in methods if split_method(m)[0] == REFERENCE_METHOD and not is_best(m)}
    return tuple(rule for rule in AGGREGATION_RULES if rule in present)


def best_rule_issue(methods: Sequence[str]) -> Issue | None:
    """The problem with a preset's ``@best`` methods, if any: they need HierFedLoRA under two rules or more."""
    if not any(is_best(m) for m in methods) or len(reference_rules(methods)) >= 2:
        return None
    return Issue(
        "methods",
        f"with a NAME@{BEST_RULE} method, '{REFERENCE_METHOD}' under at least two rules (e.g. "
        f"'{REFERENCE_METHOD}' and '{REFERENCE_METHOD}{RULE_SEPARATOR}ffa') to pick the best from",
        tuple(methods),
    )


def stage_order(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` in the order a setting runs them: explicit rules first, then ``@best`` (each in preset order)."""
    return (*[m for m in methods if not is_best(m)], *[m for m in methods if is_best(m)])


def resolve_best_rule(results: Sequence[RunResult]) -> str:
    """The rule under which :data:`REFERENCE_METHOD` reached the highest final accuracy among ``results``
    (one setting's finished runs); a tie goes to the earlier rule in AGGREGATION_RULES.

    Raises
    ------
    ValueError
        No result of :data:`REFERENCE_METHOD` under an explicit rule (the preset check prevents it).
    """
    scores = {
        split_method(r.method)[1]: r.final_accuracy
        for r in results
        if split_method(r.method)[0] == REFERENCE_METHOD and not is_best(r.method)
    }
    ordered = [rule for rule in AGGREGATION_RULES if rule in scores]
    if not ordered:
        raise ValueError(f"no finished {REFERENCE_METHOD} run to resolve @{BEST_RULE} from")
    return max(ordered, key=lambda rule: (scores[rule], -ordered.index(rule)))
