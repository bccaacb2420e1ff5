"""The closed loop's run starts from HierFedLoRA's static run: no round is trained twice.

``hierfedlora_loop`` plans as ``hierfedlora`` does and runs that plan until its replanner first
changes it. Up to then the two runs compute the same rounds, bit for bit: the same plan, seed,
options, clock draws and adapters. So while the static run trains, the harness asks the loop's own
replanner, after each committed round ``k``, what the loop would decide after ``k`` rounds
(:meth:`LoopFork.after_round`). At the first round it would switch plans, or at the end of the
static run if it never does, the static run's folder is copied into the loop's (:func:`copy_run`):
exactly the folder the loop would hold after round ``k``. The loop's run then resumes from it the
way a run resumes after a crash: it asks its replanner again after round ``k``, switches, and
trains only the rounds that differ.

The fork is taken only where it is exact: the loop under the same rule (``NAME@RULE`` alike, no
``@best``), the static run starting from no checkpoint (its yielded rounds are then every committed
round) and the loop's folder holding nothing yet. Otherwise the loop trains all its rounds itself,
with the same results, only slower.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from hierfedlora.planner.outcomes import Plan, RoundReport
from hierfedlora.runtime.run_folder import LOCK_NAME
from hierfedlora.validation.experiment_presets import LOOP_METHOD
from hierfedlora.validation.method_rules import is_best, split_method

__all__ = ["LoopFork", "copy_run", "discard_stale_copy", "loop_twin", "static_twin"]

STATIC_METHOD = "hierfedlora"
_STAGED, _STAGED_PLAN = "run.fork", "initial_plan.json.fork"  # a copy being made, renamed into place when whole

log = logging.getLogger(__name__)


def _with_rule(name: str, method: str) -> str:
    _, rule = split_method(method)
    return name if "@" not in method else f"{name}@{rule}"


def loop_twin(method: str, methods: Sequence[str]) -> str | None:
    """The closed-loop method of ``methods`` whose run may start from ``method``'s, or ``None``.

    >>> loop_twin("hierfedlora@fedex", ["fedlora", "hierfedlora@fedex", "hierfedlora_loop@fedex"])
    'hierfedlora_loop@fedex'
    >>> loop_twin("hierfedlora", ["hierfedlora", "hierfedlora_loop@fedex"]) is None
    True
    """
    if is_best(method) or split_method(method)[0] != STATIC_METHOD:
        return None
    twin = _with_rule(LOOP_METHOD, method)
    return twin if twin in methods else None


def static_twin(method: str, methods: Sequence[str]) -> str | None:
    """The static method of ``methods`` whose run ``method`` (a closed loop) waits for, or ``None``."""
    if is_best(method) or split_method(method)[0] != LOOP_METHOD:
        return None
    twin = _with_rule(STATIC_METHOD, method)
    return twin if twin in methods else None


def copy_run(run_dir: Path, method_dir: Path) -> bool:
    """Copy the run folder ``run_dir`` and its method's ``initial_plan.json`` into ``method_dir``; whether done.

    Nothing is copied where ``method_dir`` already holds a run. The run folder appears
    whole or not at all (copied beside, then renamed), so a kill at any moment leaves either no run
    (the loop trains from round 1) or the copy.
    """
    target = method_dir / "run"
    if target.exists():
        return False
    method_dir.mkdir(parents=True, exist_ok=True)
    plan_copy = method_dir / "initial_plan.json"
    if not plan_copy.exists():
        staged_plan = method_dir / _STAGED_PLAN
        shutil.copyfile(run_dir.parent / "initial_plan.json", staged_plan)
        os.replace(staged_plan, plan_copy)
    staged = method_dir / _STAGED
    shutil.rmtree(staged, ignore_errors=True)  # a copy a kill interrupted
    shutil.copytree(run_dir, staged, ignore=shutil.ignore_patterns(LOCK_NAME))
    try:
        os.rename(staged, target)
    except OSError:  # the loop's run began meanwhile: it trains itself
        shutil.rmtree(staged, ignore_errors=True)
        return False
    log.info("%s starts from %s (its rounds so far are the same)", method_dir, run_dir)
    return True


def discard_stale_copy(method_dir: Path) -> None:
    """Remove a copy a kill left half made in ``method_dir`` (the loop's run trains without it)."""
    shutil.rmtree(method_dir / _STAGED, ignore_errors=True)
    (method_dir / _STAGED_PLAN).unlink(missing_ok=True)


@dataclasses.dataclass
class LoopFork:
    """Where and when the static run of ``plan`` is copied for its closed loop.

    ``replanner`` is the loop's (a fresh one, as the loop's own run would build); ``method_dir`` the
    loop's method folder. :meth:`after_round` is called with every committed report of the static
    run in order; :meth:`finish` once it ends.
    """

    plan: Plan
    replanner: Callable[[Plan, Sequence[RoundReport], dict[str, Plan]], Plan | None]
    method_dir: Path
    max_rounds: int
    copied: bool = False
    reports: list[RoundReport] = dataclasses.field(default_factory=list)

    def after_round(self, report: RoundReport, run_dir: Path) -> None:
        """Record ``report``; copy ``run_dir`` now if the loop would switch plans after it."""
        if self.copied:
            return
        self.reports.append(report)
        if report.global_round >= self.max_rounds:  # the loop asks no replanner after its last round
            return
        switched = self.replanner(self.plan, list(self.reports), {self.plan.plan_id: self.plan})
        if switched is not None and switched.plan_id != self.plan.plan_id:
            self.copied = True  # copied or not, the loop's rounds differ from here on
            copy_run(run_dir, self.method_dir)

    def finish(self, run_dir: Path) -> None:
        """The static run ended without the loop switching: the loop's run is the same run."""
        if not self.copied and self.reports:
            self.copied = True
            copy_run(run_dir, self.method_dir)
