"""The ServerApp main helper: discovery -> fleet -> plan -> ``run_plan`` with a :class:`FlowerExecutor`.

:func:`run_server` is the whole server side of the hierfedlora Flower App:

1. **Discovery**: a ``query`` message to every node; each answers with its device id, label counts and
   profile (:func:`~hierfedlora.runtime.flower.executor.discover_nodes`).
2. **Fleet**: the server rebuilds the fleet the nodes' data come from (the run config's ``fleet-file``,
   or the seeded ``make_fleet`` of the run config, exactly as each node does), so it holds the same
   held-out split to evaluate on. Every node's label counts must equal its device's in that fleet;
   the devices' speed, memory and links are the nodes' answers (a node without a simulated
   ``compute-scale`` gets its measured step seconds divided by the cost model's host step).
3. **Plan**: the run config's ``plan-file``, or the ``planner`` the App passes in (``make_plan``) over
   the discovered devices, priced under the run config's ``aggregation`` rule. The runtime imports no
   solver: the App's ``server_app`` module wires the planner and the closed loop's re-planner in.
4. **Run**: :func:`~hierfedlora.runtime.engine.run_plan` with the Flower executor: the engine keeps
   every round's logic (aggregation inside groups and the layer-wise merge under the run's rule, base
   deltas and HetLoRA's ranks, evaluation on the held-out split, the simulated clock, checkpoints
   committed before each report, resume, the closed loop's re-plan); only the devices' local training
   happens on the nodes.

The run's rule is chosen as ``hierfedlora run --aggregation`` chooses it (:func:`run_rule`): the run
config's ``aggregation``, else the plan's (``Plan.aggregation``); a plan priced under FedAvg runs under
any rule (with a warning), one priced under another rule only under its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from hierfedlora.planner.costs import step_time_s
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.io import read_json, write_json
from hierfedlora.planner.outcomes import Plan, RoundReport
from hierfedlora.planner.types import CostModel, DeviceProfile, Fleet, PlanningProblem, SolverOptions
from hierfedlora.runtime.engine import Replanner
from hierfedlora.runtime.flower.executor import FlowerExecutor, discover_nodes
from hierfedlora.runtime.flower.node import node_fleet
from hierfedlora.runtime.flower.protocol import NodeProfile
from hierfedlora.runtime.flower.settings import AppSettings
from hierfedlora.runtime.options import RunOptions

__all__ = ["FlowerRun", "discovered_fleet", "make_server_app", "run_options", "run_rule", "run_server"]

log = logging.getLogger(__name__)

PLAN_TIME_LIMIT_S = 600.0

Planner = Callable[[PlanningProblem], Plan]
ReplannerFactory = Callable[[PlanningProblem, int], Replanner]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FlowerRun:
    """What :func:`run_server` did: the committed reports, the plan it started with, the devices' nodes,
    and every train reply's own account of what the node trained (device, node, depth, group, rounds, loss)."""

    reports: tuple[RoundReport, ...]
    plan: Plan
    node_of: Mapping[str, int]
    replies: tuple[Mapping[str, object], ...]


def run_rule(settings: AppSettings, plan: Plan | None) -> str:
    """The run's aggregation rule: the run config's ``aggregation``, else ``plan``'s rule, else ``fedavg``.

    As ``hierfedlora run --aggregation``: a plan priced under FedAvg runs under any rule (logged as a
    warning: the clock then charges the rule's traffic, not the plan's predictions); a plan priced under
    another rule runs only under its own.

    Raises
    ------
    InvalidInputError
        Naming ``aggregation``: a rule other than the one a non-FedAvg plan was priced under.

    Examples
    --------
    >>> run_rule(AppSettings(aggregation="fedex"), None)
    'fedex'
    >>> run_rule(AppSettings(), None)
    'fedavg'
    """
    if not settings.aggregation:
        return plan.aggregation if plan is not None else "fedavg"
    if plan is None or plan.aggregation == settings.aggregation:
        return settings.aggregation
    if plan.aggregation == "fedavg":
        log.warning(
            "plan %s was priced under fedavg and runs under %s: the clock charges %s's traffic, so simulated times "
            "differ from the plan's predictions",
            plan.plan_id,
            settings.aggregation,
            settings.aggregation,
        )
        return settings.aggregation
    expected = f"the rule the plan was priced under, {plan.aggregation!r} (or empty)"
    hint = f"re-plan with 'hierfedlora plan --aggregation {settings.aggregation}'"
    raise InvalidInputError([Issue("aggregation", expected, settings.aggregation, hint)], "run config")


def run_options(settings: AppSettings, aggregation: str | None = None) -> RunOptions:
    """The engine's options for the App's settings, under ``aggregation`` (default: the settings' rule or fedavg)."""
    return RunOptions(
        aggregation=aggregation or settings.aggregation or "fedavg",
        hetlora_prune_gamma=settings.hetlora_prune_gamma,
        rounds=settings.rounds,
        learning_rate=settings.learning_rate,
        optimizer=settings.optimizer,
        model=settings.model,
        lora_rank=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        max_seq_len=settings.max_seq_len,
        eval_samples=settings.eval_samples,
        use_prefix_cache=settings.use_prefix_cache,
        evaluate_groups=settings.evaluate_groups,
        seed=settings.seed,
    )


def discovered_fleet(reference: Fleet, profiles: Mapping[int, NodeProfile], cost_model: CostModel) -> Fleet:
    """``reference`` restricted to the discovered devices, with the nodes' profiles.

    Raises
    ------
    InvalidInputError
        A node naming a device the reference lacks, or holding other label counts than its device
        (the node made its data with another seed, partition or data set).
    """
    positions = {device.device_id: idx for idx, device in enumerate(reference.devices)}
    host_step_s = step_time_s(
        cost_model, compute_scale=1.0, depth=cost_model.num_layers, batch_size=cost_model.batch_size
    )
    issues, chosen = [], {}
    for node_id, profile in profiles.items():
        idx = positions.get(profile.device_id)
        if idx is None:
            issues.append(Issue(f"node {node_id}.device_id", "a device of the run's fleet", profile.device_id))
            continue
        expected = reference.devices[idx].label_counts
        if profile.label_counts != expected:
            hint = "the node made its data with another seed, partition or data set"
            issues.append(
                Issue(f"node {node_id}.label_counts", f"{expected} ({profile.device_id})", profile.label_counts, hint)
            )
            continue
        scale = profile.compute_scale if profile.compute_scale is not None else profile.measured_step_s / host_step_s
        chosen[idx] = DeviceProfile(
            device_id=profile.device_id,
            label_counts=profile.label_counts,
            compute_scale=scale,
            memory_bytes=profile.memory_bytes,
            uplink_mbps=profile.uplink_mbps,
            downlink_mbps=profile.downlink_mbps,
            tier=profile.tier or None,
        )
    if issues:
        raise InvalidInputError(issues, "discovery")
    order = sorted(chosen)
    return dataclasses.replace(
        reference,
        devices=tuple(chosen[idx] for idx in order),
        sample_indices=tuple(reference.sample_indices[idx] for idx in order) if reference.sample_indices else (),
    )


def _cost_model(settings: AppSettings, num_classes: int) -> CostModel:
    if settings.cost_model_file:
        return read_json(CostModel, settings.cost_model_file)
    from hierfedlora.models.catalog import ModelSpec
    from hierfedlora.models.profiling import measure_cost_model

    log.info("measuring %s on the server (set cost-model-file to skip)", settings.model)
    spec = ModelSpec(
        path=settings.model,
        num_labels=num_classes,
        lora_rank=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        max_seq_len=settings.max_seq_len,
    )
    return measure_cost_model(spec, batch_size=settings.batch_size, seq_len=settings.max_seq_len, seed=settings.seed)


def _problem(settings: AppSettings, fleet: Fleet, cost_model: CostModel, aggregation: str) -> PlanningProblem:
    return PlanningProblem(
        aggregation=aggregation,
        devices=fleet.devices,
        cost_model=cost_model,
        num_groups=min(settings.groups, len(fleet.devices)),
        local_steps=settings.local_steps,
        batch_size=settings.batch_size,
        solver=SolverOptions(seed=settings.seed, time_limit_s=PLAN_TIME_LIMIT_S),
    )


def _summary(plan: Plan) -> str:
    groups = ", ".join(
        f"group {g.group_id}: {len(g.device_ids)} devices, depth {g.depth}, {g.intra_rounds} intra rounds"
        for g in plan.groups
    )
    return f"plan {plan.plan_id} ({plan.status.name}): {groups}"


def run_server(
    grid: Grid,
    context: Context,
    *,
    defaults: Mapping[str, object] | None = None,
    fleet: Fleet | None = None,
    cost_model: CostModel | None = None,
    plan: Plan | None = None,
    planner: Planner | None = None,
    replanner_factory: ReplannerFactory | None = None,
    min_nodes: int = 1,
) -> FlowerRun:
    """Discover the nodes, plan, and run the plan on them; return the committed reports and what nodes did.

    Parameters
    ----------
    grid, context : the ServerApp's Grid and Context.
    defaults : mapping, optional
        Run-config values for keys the run config lacks.
    fleet : Fleet, optional
        The fleet the nodes' data come from (default: the run config's, rebuilt as the nodes do).
    cost_model : CostModel, optional
        Default: the run config's ``cost-model-file``, else measured here.
    plan : Plan, optional
        Default: the run config's ``plan-file``, else ``planner(problem)`` over the discovered devices.
    planner : callable, optional
        ``planner(problem) -> Plan``, e.g. ``hierfedlora.planner.plan.make_plan`` (the runtime imports no
        solver; the App's ``server_app`` module passes it in).
    replanner_factory : callable, optional
        ``replanner_factory(problem, every_rounds) -> Replanner`` for the closed loop (run config
        ``replan-every`` > 0), e.g. ``hierfedlora.planner.feedback.Replanner``'s constructor.
    min_nodes : int
        Wait for at least this many nodes before discovery (at least as many as the fleet, the
        fleet file or the plan names, when one is given).

    Raises
    ------
    InvalidInputError
        Bad run config; nodes that do not answer, answer with errors, or hold other data or another
        model than the server expects; no plan and no planner; a plan naming undiscovered devices.
    ResumeMismatchError, RunInterruptedError
        As :func:`~hierfedlora.runtime.engine.run_plan`.
    """
    from hierfedlora.runtime.engine import prepare_run, run_plan

    settings = AppSettings.from_run_config(dict(context.run_config), defaults)
    if fleet is None and settings.fleet_file:
        fleet = node_fleet(settings, 0)  # the file's fleet, whatever the node count
    if plan is None and settings.plan_file:
        plan = read_json(Plan, settings.plan_file)
    aggregation = run_rule(settings, plan)  # before discovery: a plan-file under another rule is refused at once
    # Nodes register one by one: with a known fleet or plan, wait for every device they name.
    expected = len(fleet.devices) if fleet is not None else len(plan.device_ids) if plan is not None else 0
    profiles = discover_nodes(grid, timeout_s=settings.timeout_s, min_nodes=max(min_nodes, expected))
    reference = fleet if fleet is not None else node_fleet(settings, len(profiles))
    cost = cost_model or _cost_model(settings, len(reference.class_names))
    run_fleet = discovered_fleet(reference, profiles, cost)
    problem = _problem(settings, run_fleet, cost, aggregation)  # planned and re-planned under the run's rule
    if plan is None:
        if planner is None:
            raise InvalidInputError([Issue("plan", "a plan, a plan-file or a planner", None)], "flower server")
        plan = planner(problem)
    log.info("%s under %s", _summary(plan), aggregation)
    options = run_options(settings, aggregation)
    run_context = prepare_run(plan, run_fleet, options, device_ids=())
    wrong_model = [
        Issue(f"node {n}.model_sha256", run_context.model_sha256, p.model_sha256)
        for n, p in profiles.items()
        if p.model_sha256 and p.model_sha256 != run_context.model_sha256
    ]
    if wrong_model:
        raise InvalidInputError(wrong_model, "discovery")
    folder = Path(settings.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "fleet.json", run_fleet)
    write_json(folder / "cost_model.json", cost)
    replanner = None
    if settings.replan_every:
        if replanner_factory is None:
            issue = Issue("replan-every", "0 unless the server app is given a replanner_factory", settings.replan_every)
            raise InvalidInputError([issue], "run config")
        replanner = replanner_factory(problem, settings.replan_every)
    node_of = {p.device_id: n for n, p in profiles.items()}
    executor = FlowerExecutor(grid, node_of, timeout_s=settings.timeout_s, aggregation=aggregation)
    reports = []
    for report in run_plan(
        plan,
        run_fleet,
        cost,
        options,
        folder,
        resume=settings.resume,
        context=run_context,
        replanner=replanner,
        executor=executor,
    ):
        log.info(
            "round %d: eval accuracy %.3f, loss %.4f, %.1f s simulated",
            report.global_round,
            report.eval_accuracy,
            report.eval_loss,
            report.sim_time_s,
        )
        reports.append(report)
    return FlowerRun(reports=tuple(reports), plan=plan, node_of=node_of, replies=tuple(executor.received))


def make_server_app(
    *,
    defaults: Mapping[str, object] | None = None,
    fleet: Fleet | None = None,
    cost_model: CostModel | None = None,
    plan: Plan | None = None,
    planner: Planner | None = None,
    replanner_factory: ReplannerFactory | None = None,
    min_nodes: int = 1,
    on_finish: Callable[[FlowerRun], None] | None = None,
) -> ServerApp:
    """A ServerApp whose main is :func:`run_server` with these arguments (``on_finish`` gets its result).

    Examples
    --------
    >>> type(make_server_app(defaults={"rounds": 1})).__name__
    'ServerApp'
    """
    if defaults:
        AppSettings.from_run_config({}, defaults)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run_server(
            grid,
            context,
            defaults=defaults,
            fleet=fleet,
            cost_model=cost_model,
            plan=plan,
            planner=planner,
            replanner_factory=replanner_factory,
            min_nodes=min_nodes,
        )
        if on_finish is not None:
            on_finish(result)

    return app
