"""The planner: fleets, measured costs, near-IID grouping and the depth/intra-rounds MILP.

Never imports torch or ``hierfedlora.runtime``.
"""

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
