"""The App's ServerApp: discovery -> plan (``make_plan``) -> hierfedlora's engine on the nodes."""

from hierfedlora.planner.feedback import Replanner
from hierfedlora.planner.plan import make_plan
from hierfedlora.runtime.flower import make_server_app


def _replanner(problem, every_rounds):  # type: ignore[no-untyped-def]
    return Replanner(problem, every_rounds=every_rounds)


app = make_server_app(planner=make_plan, replanner_factory=_replanner)
