"""The ServerApp side of training and discovery: :class:`FlowerExecutor` and :func:`discover_nodes`.

:func:`discover_nodes` sends one ``query`` message to every node the Grid knows and reads back each
node's :class:`~hierfedlora.runtime.flower.protocol.NodeProfile`; the answers map device ids to node
ids. :class:`FlowerExecutor` is the engine's :class:`~hierfedlora.runtime.executors.base.Executor` on
a Flower Grid: for a batch of training tasks (one intra-group round of each group in flight) it builds
one fresh ``train`` message per device (the task's state, its base delta and whether ``lora_A`` trains,
and the run's aggregation rule), sends them all with one ``grid.send_and_receive``, and turns
the replies back into :class:`~hierfedlora.runtime.local_training.DeviceUpdate` objects, per task and
per device in the task's order. A missing reply or a reply carrying an error stops the run with an
:class:`~hierfedlora.planner.errors.InvalidInputError` naming the node and device; the engine commits
nothing for that round, so ``resume`` repeats it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.runtime.aggregation_rules import get_rule
from hierfedlora.runtime.executors.base import TrainTask
from hierfedlora.runtime.flower.protocol import (
    QUERY,
    TRAIN,
    DeviceJob,
    NodeProfile,
    decode_profile,
    decode_update,
    encode_job,
    reply_issue,
)
from hierfedlora.runtime.local_training import DeviceUpdate

__all__ = ["FlowerExecutor", "discover_nodes"]

log = logging.getLogger(__name__)


def _send(grid: Grid, messages: Sequence[Message], timeout_s: float, what: str) -> list[Message]:
    """Send ``messages`` (at most one per node) with ``grid.send_and_receive``; the replies in their order.

    Replies are matched by the node they come from, which is unique within one batch.

    Raises
    ------
    InvalidInputError
        A node that did not answer within ``timeout_s``.
    """
    nodes = [message.metadata.dst_node_id for message in messages]
    if len(set(nodes)) != len(nodes):  # an internal invariant: a device is in one group, a node is one device
        raise AssertionError(f"two {what} messages for one node in one batch")
    by_node = {reply.metadata.src_node_id: reply for reply in grid.send_and_receive(messages, timeout=timeout_s)}
    missing = [
        Issue(f"node {n}", f"a {what} reply within {timeout_s:g} s", "no reply") for n in nodes if n not in by_node
    ]
    if missing:
        raise InvalidInputError(missing, f"flower {what}")
    return [by_node[n] for n in nodes]


def discover_nodes(grid: Grid, *, timeout_s: float = 600.0, min_nodes: int = 1) -> dict[int, NodeProfile]:
    """Ask every node who it is: node id -> :class:`NodeProfile`.

    Waits (up to ``timeout_s``) until at least ``min_nodes`` nodes are connected, then queries all of them.

    Raises
    ------
    InvalidInputError
        Too few nodes connected in time; a node answering with an error or not at all; two nodes
        claiming the same device.
    """
    deadline = time.monotonic() + timeout_s
    node_ids = sorted(grid.get_node_ids())
    while len(node_ids) < min_nodes and time.monotonic() < deadline:
        time.sleep(0.2)
        node_ids = sorted(grid.get_node_ids())
    if len(node_ids) < min_nodes:
        raise InvalidInputError([Issue("nodes", f"at least {min_nodes} connected nodes", len(node_ids))], "discovery")
    messages = [
        Message(RecordDict({"query": ConfigRecord({"what": "profile"})}), node_id, QUERY, group_id="discovery")
        for node_id in node_ids
    ]
    replies = _send(grid, messages, max(deadline - time.monotonic(), 1.0), "query")
    issues, profiles = [], {}
    for node_id, reply in zip(node_ids, replies, strict=True):
        issue = reply_issue(reply, "query")
        if issue:
            issues.append(issue)
        else:
            profiles[node_id] = decode_profile(reply.content)
    seen: dict[str, int] = {}
    for node_id, profile in profiles.items():
        if profile.device_id in seen:
            issues.append(
                Issue(
                    f"node {node_id}",
                    f"a device id no other node claims (node {seen[profile.device_id]})",
                    profile.device_id,
                )
            )
        seen[profile.device_id] = node_id
    if issues:
        raise InvalidInputError(issues, "discovery")
    log.info("discovered %d nodes: %s", len(profiles), ", ".join(p.device_id for p in profiles.values()))
    return profiles


class FlowerExecutor:
    """Train tasks on Flower nodes: one fresh ``train`` message per device, replies in task order.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
    node_of : mapping of str to int
        Device id -> node id (from :func:`discover_nodes`).
    timeout_s : float
        How long to wait for one batch's replies.
    aggregation : str
        The run's rule (``RunOptions.aggregation``), named in every job: a node drops its frozen-prefix
        cache under a rule that changes the base weights, as ``RunContext.for_rule`` does in-process.

    Attributes
    ----------
    received : list of dict
        Per device trained, the depth, group and rounds its node's reply says it trained (the
        nodes' own account, checked against the task in :meth:`train`).
    """

    def __init__(
        self, grid: Grid, node_of: Mapping[str, int], *, timeout_s: float = 3600.0, aggregation: str = "fedavg"
    ) -> None:
        get_rule(aggregation)  # an unknown rule is refused here, not on every node
        self.grid = grid
        self.node_of = dict(node_of)
        self.timeout_s = timeout_s
        self.aggregation = aggregation
        self.received: list[dict[str, object]] = []

    def train(self, tasks: Sequence[TrainTask]) -> list[list[DeviceUpdate]]:
        """Train every device of every task on its node; per task, per device, in order.

        Raises
        ------
        InvalidInputError
            A device without a node; a node's error or silence; a reply for another depth or group.
        """
        unknown = [
            Issue("device_ids", "devices found by discovery", d)
            for t in tasks
            for d in t.device_ids
            if d not in self.node_of
        ]
        if unknown:
            raise InvalidInputError(unknown, "flower executor")
        jobs, messages = [], []
        for task in tasks:
            for device_id, seed in zip(task.device_ids, task.seeds, strict=True):
                job = DeviceJob(
                    device_id=device_id,
                    group_index=task.group_index,
                    depth=task.depth,
                    layers=task.layers,
                    local_steps=task.local_steps,
                    batch_size=task.batch_size,
                    learning_rate=task.learning_rate,
                    optimizer=task.optimizer,
                    seed=seed,
                    global_round=task.global_round,
                    intra_round=task.intra_round,
                    start_state=task.start_state,
                    aggregation=self.aggregation,
                    base_delta=dict(task.base_delta),
                    train_lora_a=task.train_lora_a,
                )
                group_id = f"round-{task.global_round}.{task.intra_round}"
                jobs.append(job)
                messages.append(Message(encode_job(job), self.node_of[device_id], TRAIN, group_id=group_id))
        replies = _send(self.grid, messages, self.timeout_s, "train")
        updates, issues = [], []
        for job, reply in zip(jobs, replies, strict=True):
            issue = reply_issue(reply, f"train (device {job.device_id})")
            if issue:
                issues.append(issue)
                continue
            update, metrics = decode_update(reply.content)
            if (int(metrics["lora-depth"]), int(metrics["group"])) != (job.depth, job.group_index):
                got = f"depth {metrics['lora-depth']}, group {metrics['group']}"
                issues.append(
                    Issue(f"node {reply.metadata.src_node_id}", f"depth {job.depth}, group {job.group_index}", got)
                )
            self.received.append(
                {
                    "device_id": job.device_id,
                    "node_id": reply.metadata.src_node_id,
                    **metrics,
                    "global_round": job.global_round,
                    "intra_round": job.intra_round,
                }
            )
            updates.append(update)
        if issues:
            raise InvalidInputError(issues, "flower train")
        result, position = [], 0
        for task in tasks:
            result.append(updates[position : position + len(task.device_ids)])
            position += len(task.device_ids)
        return result

    def close(self) -> None:
        """Nothing to release: the Grid belongs to the ServerApp."""
