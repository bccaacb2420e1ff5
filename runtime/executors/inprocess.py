"""The default executor: every device trains in this process, one after another, on the run's one model."""

from __future__ import annotations

from collections.abc import Sequence

from hierfedlora.runtime.batched_training import DeviceBatching
from hierfedlora.runtime.context import RunContext
from hierfedlora.runtime.executors.base import LocalTrainer, TrainTask
from hierfedlora.runtime.local_training import DeviceUpdate

__all__ = ["InProcessExecutor"]


class InProcessExecutor:
    """Trains tasks sequentially in the calling process (the runtime's reference behaviour).

    Parameters
    ----------
    context : RunContext
        The run's model and the tokenized rows of every device the tasks name.
    batching : DeviceBatching, optional
        Train a task's devices in batched chunks (``runtime.batched_training``); default one by one.
    """

    def __init__(self, context: RunContext, batching: DeviceBatching | None = None) -> None:
        self._trainer = LocalTrainer(context, batching)

    def train(self, tasks: Sequence[TrainTask]) -> list[list[DeviceUpdate]]:
        """Train the tasks in order; see :class:`~hierfedlora.runtime.executors.base.Executor`."""
        return [self._trainer.train_task(task) for task in tasks]

    def close(self) -> None:
        """Nothing to release: the context belongs to the run."""
