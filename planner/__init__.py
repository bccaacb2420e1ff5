"""The planner: fleets, measured costs, near-IID grouping and the depth/intra-rounds MILP.

Never imports torch or ``hierfedlora.runtime``. The contract types and errors import eagerly;
the entry points below load their modules (and the solvers) on first use, so importing a type
stays cheap::

    from hierfedlora.planner import make_fleet, read_wordnet, make_plan, save_plan, load_plan

Examples
--------
>>> from hierfedlora import planner
>>> planner.make_plan.__module__
'hierfedlora.planner.plan'
"""

import importlib
import logging
from typing import Any

from hierfedlora.planner.errors import (
    HierFedLoraError,
    HierFedLoraWarning,
    InfeasibleError,
    InvalidInputError,
    Issue,
    NoSolutionError,
    ResumeMismatchError,
    RunInterruptedError,
    SolverFailedError,
    StorageError,
)
from hierfedlora.planner.outcomes import (
    Group,
    GroupRoundResult,
    Limit,
    Plan,
    RoundReport,
    Skew,
    SolveStatus,
)
from hierfedlora.planner.types import (
    ConvergenceParams,
    CostModel,
    DatasetSpec,
    DeviceProfile,
    Fleet,
    PlanningProblem,
    SolverOptions,
)


def _drop_ortools_version_notice(record: logging.LogRecord) -> bool:
    # cvxpy 1.8 probes its GLOP/PDLP interfaces when it is imported, and they refuse ortools 9.15
    # with a warning. We never use those interfaces (HiGHS solves our MILP), so the notice is noise;
    # every other cvxpy warning still shows. Installed in the package's __init__, which runs
    # before any planner module imports cvxpy.
    return "Unrecognized new version of ortools" not in record.getMessage()


logging.getLogger("__cvxpy__").addFilter(_drop_ortools_version_notice)

# entry point -> module that defines it (imported on first access)
_LAZY = {
    "make_plan": "plan",
    "summarize_plan": "plan",
    "save_plan": "plan_files",
    "load_plan": "plan_files",
    "make_fleet": "fleet",
    "load_fleet": "fleet",
    "save_fleet": "fleet",
    "import_fedscale": "fleet",
    "read_wordnet": "fleets.datasets",
    "read_csv": "fleets.datasets",
    "read_jsonl": "fleets.datasets",
    "TIERS": "fleets.tiers",
    "PRESETS": "fleets.tiers",
    "NETWORKS": "fleets.tiers",
    "synthetic_fleet": "fleets.synthetic",
    "read_fleet_npz": "fleets.fleet_store",
    "write_fleet_npz": "fleets.fleet_store",
    "target_for_loss": "types",
    "CALIBRATION_SOURCE": "types",
    "check_problem": "checks",
    "replan": "feedback",
    "Replanner": "feedback",
    "pooled_refit": "refit",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hierfedlora.planner' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hierfedlora.planner.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    *sorted(_LAZY),
    "ConvergenceParams",
    "CostModel",
    "DatasetSpec",
    "DeviceProfile",
    "Fleet",
    "Group",
    "GroupRoundResult",
    "HierFedLoraError",
    "HierFedLoraWarning",
    "InfeasibleError",
    "InvalidInputError",
    "Issue",
    "Limit",
    "NoSolutionError",
    "Plan",
    "PlanningProblem",
    "ResumeMismatchError",
    "RoundReport",
    "RunInterruptedError",
    "Skew",
    "SolveStatus",
    "SolverFailedError",
    "StorageError",
    "SolverOptions",
]
