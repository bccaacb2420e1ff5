"""The planner: fleets, measured costs, near-IID grouping and the depth/intra-rounds MILP.

Never imports torch or ``hierfedlora.runtime``.
"""

import logging

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

__all__ = [
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
    "SolverOptions",
]
