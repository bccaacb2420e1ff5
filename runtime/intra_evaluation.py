"""The observer of a global round's inside: the global model after each intra-group round.

What is observed (``planner.intra_evals`` states it for readers of reports). After level ``j``
(every group with ``tau_k >= j`` has done its ``j``-th intra-group round, the others are done):

(O1) the model: ``rule.aggregate(global, [s_k(j) for contributing k], [n_k], [pending_k(j)])``, the
     run's own merge of the groups' current states ``s_k(j)`` with their sample weights ``n_k`` and
     pending base deltas; a group none of whose updates has been accepted yet is left out, as at the
     round's end; evaluated at the depth of the round-end evaluation, on the run's base delta plus
     the merge's;
(O2) its time: ``start + max_k sum(t_{k,r} for r < min(j, tau_k)) + t_glob``, with ``t_{k,r}`` the
     clock's charge for group k's intra round r (``GroupTiming.intra_round_s``: noise, stragglers and
     deadlines included) and ``t_glob`` the round's global aggregation. Without noise this is the
     end of a round cut after level ``j``; for ``j = max_k tau_k`` it is the round's end, which the
     round-end report covers, so levels ``1 .. max_k tau_k - 1`` are observed.

Nothing here is sent, charged to the clock or drawn from a generator: the run's training is the
same with and without the observer (tested bit for bit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hierfedlora.models.adapters import AdapterState
from hierfedlora.models.base_delta import add_deltas, applied_base_delta
from hierfedlora.planner.intra_evals import IntraRoundEval
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.types import Fleet
from hierfedlora.runtime.aggregation_rules import AggregationRule, BaseDelta
from hierfedlora.runtime.clock import RoundTiming, SimClock
from hierfedlora.runtime.context import RunContext
from hierfedlora.runtime.group_training import LevelObserver
from hierfedlora.runtime.local_training import evaluate

__all__ = ["intra_level_time_s", "observe_level"]


def intra_level_time_s(timing: RoundTiming, level: int, start_s: float) -> float:
    """(O2): the simulated time at which the model after intra-group round ``level`` (1-based) is observed.

    Examples
    --------
    >>> from hierfedlora.runtime.clock import GroupTiming
    >>> groups = (GroupTiming(group_id=0, intra_round_s=(2.0, 2.0, 2.0), group_s=6.0, upload_bytes=0,
    ...                       download_bytes=0),
    ...           GroupTiming(group_id=1, intra_round_s=(5.0,), group_s=5.0, upload_bytes=0, download_bytes=0))
    >>> timing = RoundTiming(groups=groups, global_aggregation_s=1.0, round_s=7.0)
    >>> intra_level_time_s(timing, 1, 10.0), intra_level_time_s(timing, 2, 10.0), intra_level_time_s(timing, 3, 10.0)
    (16.0, 16.0, 17.0)
    """
    slowest = max((sum(g.intra_round_s[:level]) for g in timing.groups), default=0.0)
    return start_s + slowest + timing.global_aggregation_s


def observe_level(
    context: RunContext,
    rule: AggregationRule,
    global_state: AdapterState,
    base_delta: BaseDelta,
    states: Sequence[AdapterState],
    pending: Sequence[BaseDelta],
    contributed: Sequence[bool],
    weights: Sequence[float],
    *,
    level: int,
    sim_time_s: float,
    eval_depth: int,
    batch_size: int,
) -> IntraRoundEval | None:
    """(O1): evaluate the merge of the groups' current states; ``None`` when no group has contributed yet."""
    kept = [k for k, took_part in enumerate(contributed) if took_part]
    if not kept:
        return None
    merged = rule.aggregate(
        global_state, [states[k] for k in kept], [weights[k] for k in kept], [pending[k] for k in kept]
    )
    forward = context.forward_for(eval_depth)
    context.model.set_adapter_state({key: merged.state[key] for key in context.model.adapter_keys()})
    with applied_base_delta(context.model.peft_model, add_deltas(base_delta, merged.base_delta)):
        loss, accuracy = evaluate(forward, context.data.labels, context.eval_rows, batch_size=batch_size)
    return IntraRoundEval(intra_round=level, sim_time_s=sim_time_s, eval_loss=loss, eval_accuracy=accuracy)


def _intra_observer(
    sink: list[IntraRoundEval],
    context: RunContext,
    rule: object,
    global_state: AdapterState,
    base_delta: BaseDelta,
    plan: Plan,
    fleet: Fleet,
    positions: Mapping[str, int],
    timing: RoundTiming,
    clock: SimClock,
    eval_depth: int,
    batch_size: int,
) -> LevelObserver:
    """The observer of ``runtime.intra_evaluation`` for one round, appending to ``sink``."""
    weights = [float(sum(fleet.devices[positions[d]].num_samples for d in g.device_ids)) for g in plan.groups]

    def observe(level: int, states: Sequence[AdapterState], pending: Sequence[BaseDelta], done: Sequence[bool]) -> None:
        seen = observe_level(
            context, rule, global_state, base_delta, states, pending, done, weights,  # type: ignore[arg-type]
            level=level, sim_time_s=intra_level_time_s(timing, level, clock.now_s), eval_depth=eval_depth,
            batch_size=batch_size,
        )  # fmt: skip
        if seen is not None:
            sink.append(seen)

    return observe
