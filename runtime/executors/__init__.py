"""Executors train the devices of a plan's groups for the engine: in-process (default), Ray, Flower.

``base`` holds the contract (:class:`TrainTask`, :class:`Executor`, :class:`LocalTrainer`);
``inprocess`` the default; ``ray`` (:class:`~hierfedlora.runtime.executors.ray.RayExecutor`) trains on Ray
actors, ``placement`` sizes and places them (pure, no Ray). Executors that need optional packages (Ray,
Flower) import them lazily, so importing this package pulls neither.
"""

from hierfedlora.runtime.executors.base import Executor, LocalTrainer, TrainTask
from hierfedlora.runtime.executors.inprocess import InProcessExecutor

__all__ = ["Executor", "InProcessExecutor", "LocalTrainer", "TrainTask"]
