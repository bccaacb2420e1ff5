"""Switching plans during a run: the replanner hook, the run's plans folder, the plan in force on resume.

After every committed round the engine (``runtime.engine.run_plan``) asks a :class:`Replanner`
for the plan of the next round (:func:`consult_replanner`). A new plan is checked against the
run's fleet and model exactly as the first one was, and saved under ``plans/<plan_id>.json``
(every plan the run has used, once each; ``plan.json`` is always the one in force) before it
takes effect. A resumed run finds the plan of its last committed round by walking the saved
plans' ``parent_plan_id`` lineage back to the plan it was started with (:func:`plan_in_force`);
anything it cannot prove descends from that plan is left to the checkpoint's own refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.io import read_json, write_json
from hierfedlora.planner.outcomes import Plan, RoundReport
from hierfedlora.planner.types import Fleet
from hierfedlora.runtime.checkpoint import read_checkpoint_plan_id
from hierfedlora.runtime.context import RunContext, check_plan_for_run

__all__ = ["PLANS_FOLDER", "Replanner", "consult_replanner", "plan_in_force", "save_plan"]

log = logging.getLogger(__name__)


class Replanner(Protocol):
    """Consulted after every committed round; returns a new plan to switch to, or ``None``.

    ``reports`` are all committed reports of the run in order (each names its plan);
    ``plans`` maps every plan id the run has used to its plan. It must be deterministic in
    its inputs: a resumed run consults it again for the last committed round.
    ``planner.feedback.Replanner`` is the implementation.
    """

    def __call__(self, plan: Plan, reports: Sequence[RoundReport], plans: Mapping[str, Plan]) -> Plan | None: ...


PLANS_FOLDER = "plans"


def save_plan(folder: Path, plan: Plan) -> None:
    """Save ``plan`` as the plan in force (``plan.json``) and, once, under ``plans/<plan_id>.json``."""
    (folder / PLANS_FOLDER).mkdir(exist_ok=True)
    path = folder / PLANS_FOLDER / f"{plan.plan_id}.json"
    if not path.exists():
        write_json(path, plan)
    write_json(folder / "plan.json", plan)


def consult_replanner(
    replanner: Replanner,
    plan: Plan,
    reports: Sequence[RoundReport],
    plans: dict[str, Plan],
    fleet: Fleet,
    context: RunContext,
    folder: Path,
    samples_of: Mapping[str, int],
) -> Plan:
    """Ask the replanner; check, record and return the plan in force for the next round."""
    new_plan = replanner(plan, reports, plans)
    if new_plan is None or new_plan.plan_id == plan.plan_id:
        return plan
    issues = check_plan_for_run(new_plan, fleet, context.model.num_layers, context.model.spec.lora_rank)
    issues += [
        Issue("plan.device_ids", "devices the run has data for", d)
        for d in new_plan.device_ids
        if not samples_of.get(d)
    ]
    if issues:
        raise InvalidInputError(issues, "re-plan")
    log.info("switching plan %s -> %s: %s", plan.plan_id, new_plan.plan_id, new_plan.reason)
    plans[new_plan.plan_id] = new_plan
    save_plan(folder, new_plan)
    return new_plan


def plan_in_force(folder: Path, plan: Plan, plans: dict[str, Plan]) -> Plan:
    """The plan of the last committed round: ``plan`` itself, or a re-plan descending from it."""
    saved = {}
    for path in sorted((folder / PLANS_FOLDER).glob("*.json")):
        try:
            candidate = read_json(Plan, path)
        except InvalidInputError:
            continue  # a torn or foreign file cannot be the plan of a committed round
        saved[candidate.plan_id] = candidate
    try:
        committed = read_checkpoint_plan_id(folder)
    except InvalidInputError:
        return plan  # load_checkpoint reports what is wrong with the manifest
    current = saved.get(committed)
    if committed == plan.plan_id or current is None:
        return plan  # a foreign plan id: load_checkpoint refuses it by name
    lineage, cursor = [current], current
    while cursor.parent_plan_id is not None and cursor.parent_plan_id != plan.plan_id:
        cursor = saved.get(cursor.parent_plan_id)  # type: ignore[assignment]
        if cursor is None or len(lineage) > len(saved):
            return plan
        lineage.append(cursor)
    if cursor.parent_plan_id != plan.plan_id:
        return plan
    plans.update({p.plan_id: p for p in lineage})
    return current
