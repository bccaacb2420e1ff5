"""Plan files: :func:`save_plan` and :func:`load_plan` (JSON, atomic, schema-checked).

A plan file is the :class:`~hierfedlora.planner.outcomes.Plan` as indented JSON, the file
``hierfedlora plan --out`` writes and ``hierfedlora run`` reads. Writes go through a temporary
file in the same folder (``planner.io``), so a reader never sees half a plan.

Examples
--------
>>> import tempfile, pathlib
>>> from hierfedlora.planner.outcomes import Group, Plan, Skew, SolveStatus
>>> group = Group(group_id=0, device_ids=("a", "b"), depth=2, intra_rounds=4, local_steps=5,
...     label_skew=Skew(kl=0.01, l1=0.1, hellinger=0.05), predicted_intra_round_s=3.0)
>>> plan = Plan(groups=(group,), predicted_round_time_s=13.0, predicted_rounds_to_target=40.0,
...     objective_value=520.0, dual_bound=520.0, status=SolveStatus.OPTIMAL,
...     solve_time_s=0.1, solver="cpsat+highs", seed=0)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "plan.json"
>>> save_plan(path, plan)
>>> load_plan(path) == plan
True
"""

from __future__ import annotations

import os

from hierfedlora.planner.io import read_json, write_json
from hierfedlora.planner.outcomes import Plan

__all__ = ["load_plan", "save_plan"]


def save_plan(path: str | os.PathLike[str], plan: Plan) -> None:
    """Write ``plan`` to ``path`` as JSON, atomically (parent folders are created)."""
    write_json(path, plan)


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read a plan file.

    Raises
    ------
    InvalidInputError
        If the file is missing, not JSON, or breaks a field rule (every problem listed, with
        its path into the file).
    """
    return read_json(Plan, path)
