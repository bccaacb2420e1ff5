"""``HierFedLoraStrategy``: a hierfedlora plan as a flwr 1.42 ``Strategy``, for users of ``strategy.start``.

Flower's loop (``Strategy.start``) runs ``num_rounds`` rounds of configure_train -> send_and_receive ->
aggregate_train. Here Flower round ``t`` (from 1) is one *sub-round* of the plan: with
``I = max_k intra_rounds_k``, round ``t`` is global round ``r = (t - 1) // I + 1`` at level
``i = (t - 1) % I``, and only the groups with ``intra_rounds_k > i`` are scheduled: each of their
devices gets one fresh ``train`` message with its group's state and depth (the nodes run
:func:`~hierfedlora.runtime.flower.node.make_client_app`'s ClientApp).

- ``configure_train`` at level 0 cuts every group's start state out of the global ``arrays`` (the
  keys of its depth or layers, plus the head; truncated to its LoRA rank where it has one); later
  levels continue from the group's own FedAvg.
- ``aggregate_train`` takes each scheduled group's sample-weighted FedAvg
  (:func:`~hierfedlora.runtime.aggregation.fedavg`, weights = the replies' ``num-examples``). At the
  last level of a global round it merges the groups layer by layer
  (:func:`~hierfedlora.runtime.aggregation.merge_across_groups`) and returns the new global arrays;
  before it, it returns ``None`` (the global model does not change within a global round).
  Flower's FedAvg is never used: it would average states with different keys.
- Seeds are the engine's (``derive_seed(seed, r, k, i, position)``), so the same plan gives the
  engine's adapters, bit for bit.
- Evaluation is the caller's ``evaluate_fn`` (server side); ``configure_evaluate`` sends nothing.

Device ids map to node ids by ``node_of``, or by discovery (a ``query`` to every node) on the first
round.

The Strategy aggregates with FedAvg only. The other rules need run state a ``Strategy``'s arrays do not
hold (FedEx-LoRA's and FLoRA's base deltas, HetLoRA's pruned ranks) or the engine's per-rule traffic and
evaluation, so a plan priced under another rule (``Plan.aggregation``) is refused at construction rather
than averaged. Run such a plan with the App (:func:`~hierfedlora.runtime.flower.server.run_server`, run
config ``aggregation``), which runs every rule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from hierfedlora.models.adapters import AdapterState, layer_of, truncate_rank
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.outcomes import Group, Plan
from hierfedlora.runtime.aggregation import fedavg, merge_across_groups
from hierfedlora.runtime.flower.executor import discover_nodes
from hierfedlora.runtime.flower.protocol import TRAIN, DeviceJob, decode_update, encode_job, reply_issue
from hierfedlora.runtime.local_training import derive_seed

__all__ = ["HierFedLoraStrategy"]

log = logging.getLogger(__name__)


def _state_of(arrays: ArrayRecord) -> AdapterState:
    return {key: value.clone() for key, value in arrays.to_torch_state_dict().items()}


def _group_keys(state: AdapterState, group: Group, num_layers: int) -> list[str]:
    live = set(group.layers) if group.layers is not None else set(range(num_layers - group.depth, num_layers))
    return [key for key in state if (layer := layer_of(key)) is None or layer in live]


class HierFedLoraStrategy(Strategy):
    """Run ``plan`` through ``Strategy.start``: Flower rounds are intra-group sub-rounds.

    Parameters
    ----------
    plan : Plan
    learning_rate : float
    optimizer : {"adamw", "sgd"}
    seed : int
        The run seed the per-device seeds derive from (the engine's ``RunOptions.seed``).
    node_of : mapping of str to int, optional
        Device id -> node id; default: discovered on the first round.
    timeout_s : float
        Discovery's wait for nodes and replies.

    Raises
    ------
    InvalidInputError
        Naming ``plan.aggregation``: a plan priced under another rule than ``fedavg`` (the Strategy
        averages with FedAvg only; the App runs every rule).

    Examples
    --------
    With a plan whose deepest group aggregates twice per global round, 3 global rounds are 6 Flower
    rounds: ``strategy.start(grid, initial_arrays, num_rounds=strategy.num_rounds(3), evaluate_fn=...)``.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        learning_rate: float = 2e-3,
        optimizer: str = "adamw",
        seed: int = 0,
        node_of: Mapping[str, int] | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        if plan.aggregation != "fedavg":
            expected = "'fedavg' (HierFedLoraStrategy averages with FedAvg only)"
            hint = "run the plan with the Flower App (run config 'aggregation'), which runs every rule"
            raise InvalidInputError(
                [Issue("plan.aggregation", expected, plan.aggregation, hint)], "HierFedLoraStrategy"
            )
        self.plan = plan
        self.learning_rate, self.optimizer, self.seed = learning_rate, optimizer, seed
        self.node_of = dict(node_of) if node_of is not None else None
        self.timeout_s = timeout_s
        self.levels = max(group.intra_rounds for group in plan.groups)
        self._global: AdapterState = {}
        self._groups: list[AdapterState] = []
        self._samples: list[float] = [0.0] * len(plan.groups)
        self._scheduled: list[int] = []

    def num_rounds(self, global_rounds: int) -> int:
        """Flower rounds that make ``global_rounds`` global rounds of the plan."""
        return global_rounds * self.levels

    def position(self, server_round: int) -> tuple[int, int]:
        """(global round from 1, level from 0) of Flower round ``server_round`` (from 1)."""
        return (server_round - 1) // self.levels + 1, (server_round - 1) % self.levels

    def summary(self) -> None:
        """Log the plan the strategy runs."""
        log.info(
            "HierFedLoraStrategy: plan %s, %d groups (depths %s, intra rounds %s), %d Flower rounds per global round",
            self.plan.plan_id,
            len(self.plan.groups),
            [g.depth for g in self.plan.groups],
            [g.intra_rounds for g in self.plan.groups],
            self.levels,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One fresh ``train`` message per device of the groups scheduled in this sub-round."""
        global_round, level = self.position(server_round)
        if self.node_of is None:
            profiles = discover_nodes(grid, timeout_s=self.timeout_s, min_nodes=len(self.plan.device_ids))
            self.node_of = {profile.device_id: node_id for node_id, profile in profiles.items()}
        missing = [
            Issue("plan.device_ids", "devices a node answers for", d)
            for d in self.plan.device_ids
            if d not in self.node_of
        ]
        if missing:
            raise InvalidInputError(missing, "HierFedLoraStrategy")
        if level == 0:
            self._global = _state_of(arrays)
            num_layers = 1 + max(layer for key in self._global if (layer := layer_of(key)) is not None)
            self._groups = []
            for group in self.plan.groups:
                state = {key: self._global[key] for key in _group_keys(self._global, group, num_layers)}
                self._groups.append(truncate_rank(state, group.lora_rank) if group.lora_rank is not None else state)
        self._scheduled = [k for k, group in enumerate(self.plan.groups) if level < group.intra_rounds]
        messages = []
        for k in self._scheduled:
            group = self.plan.groups[k]
            for position, device_id in enumerate(group.device_ids):
                job = DeviceJob(
                    device_id=device_id,
                    group_index=k,
                    depth=group.depth,
                    layers=group.layers,
                    local_steps=group.local_steps,
                    batch_size=self.plan.batch_size,
                    learning_rate=self.learning_rate,
                    optimizer=self.optimizer,
                    seed=derive_seed(self.seed, global_round, k, level, position),
                    global_round=global_round,
                    intra_round=level,
                    start_state=self._groups[k],
                )
                group_id = f"round-{global_round}.{level}"
                messages.append(Message(encode_job(job), self.node_of[device_id], TRAIN, group_id=group_id))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Per-group FedAvg; at a global round's last level, the layer-wise merge (else no new global arrays).

        Raises
        ------
        InvalidInputError
            A reply carrying an error, or a scheduled device without a reply.
        """
        global_round, level = self.position(server_round)
        assert self.node_of is not None  # set by configure_train
        device_of = {node_id: device_id for device_id, node_id in self.node_of.items()}
        by_device, issues = {}, []
        for reply in replies:
            issue = reply_issue(reply, "train")
            if issue:
                issues.append(issue)
            else:
                by_device[device_of[reply.metadata.src_node_id]] = decode_update(reply.content)
        metrics: dict[str, float | int] = {"global-round": global_round, "level": level}
        for k in self._scheduled:
            group = self.plan.groups[k]
            lost = [d for d in group.device_ids if d not in by_device]
            issues += [Issue(f"groups[{k}].device_ids", "a train reply", f"none from {d}") for d in lost]
            if lost:
                continue
            updates = [by_device[d][0] for d in group.device_ids]
            weights = [float(by_device[d][1]["num-examples"]) for d in group.device_ids]
            self._groups[k] = fedavg([u.state for u in updates], weights)
            self._samples[k] = float(sum(weights))
            metrics[f"group-{k}-loss"] = float(np.average([u.mean_loss for u in updates], weights=weights))
        if issues:
            raise InvalidInputError(issues, f"HierFedLoraStrategy round {server_round}")
        if level < self.levels - 1:
            return None, MetricRecord(metrics)
        self._global = merge_across_groups(self._global, self._groups, self._samples)
        return ArrayRecord.from_torch_state_dict(self._global), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: evaluate on the server with ``start(..., evaluate_fn=...)``."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Nothing to aggregate (no evaluation messages are sent)."""
        return None
