"""Executors train the engine's tasks; where a device trains does not change what it computes."""

from __future__ import annotations

import pytest
import torch

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.executors import Executor, InProcessExecutor, LocalTrainer, TrainTask
from hierfedlora.runtime.options import RunOptions
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import committed_tensors


def _options(model_dir, rounds: int) -> RunOptions:
    # batched_devices=1: other executors train device by device, the in-process reference must too (bit for bit)
    return RunOptions(
        rounds=rounds, model=str(model_dir), eval_samples=16, eval_batch_size=16, seed=3, batched_devices=1
    )


class _SplitExecutor:
    """Trains each device on one of two separate contexts (as two worker processes would), newest task first."""

    def __init__(self, plan, fleet, options) -> None:
        ids = plan.device_ids
        self.trainers = [
            LocalTrainer(prepare_run(plan, fleet, options, device_ids=ids[0::2])),
            LocalTrainer(prepare_run(plan, fleet, options, device_ids=ids[1::2])),
        ]
        self.tasks: list[TrainTask] = []

    def _trainer_of(self, device_id: str) -> LocalTrainer:
        return next(t for t in self.trainers if device_id in t.context.device_rows)

    def train(self, tasks):
        self.tasks.extend(tasks)
        results = {}
        for task in reversed(tasks):  # order must not matter: groups are independent within a level
            updates = []
            for device_id, seed in zip(task.device_ids, task.seeds, strict=True):
                single = TrainTask(**{**_fields(task), "device_ids": (device_id,), "seeds": (seed,)})
                updates.extend(self._trainer_of(device_id).train_task(single))
            results[task.group_index] = updates
        return [results[task.group_index] for task in tasks]

    def close(self) -> None:
        pass


def _fields(task: TrainTask) -> dict:
    return {name: getattr(task, name) for name in TrainTask.__dataclass_fields__}


def test_the_in_process_executor_satisfies_the_protocol(small_fleet, minilm_slice_dir):
    """The default executor is an ``Executor``; so is a user's own class with the two methods."""
    fleet, _ = small_fleet
    context = prepare_run(make_two_group_plan(fleet), fleet, _options(minilm_slice_dir, 1))
    assert isinstance(InProcessExecutor(context), Executor)
    assert isinstance(_SplitExecutor.__new__(_SplitExecutor), Executor)


def test_an_executor_on_its_own_contexts_gives_the_in_process_adapters(tmp_path, six_device_fleet, minilm_slice_dir):
    """Devices trained on two separate contexts, tasks taken in another order, give identical adapters and reports."""
    # Arrange
    fleet, _ = six_device_fleet
    plan, cost, options = make_two_group_plan(fleet), make_cost_model(2), _options(minilm_slice_dir, 2)
    split = _SplitExecutor(plan, fleet, options)
    driver = prepare_run(plan, fleet, options, device_ids=())  # evaluation rows only
    # Act
    reference = list(run_plan(plan, fleet, cost, options, tmp_path / "inprocess"))
    remote = list(run_plan(plan, fleet, cost, options, tmp_path / "split", context=driver, executor=split))
    # Assert
    assert driver.device_rows == {}
    ours, theirs = committed_tensors(tmp_path / "inprocess"), committed_tensors(tmp_path / "split")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [r.eval_loss for r in remote] == [r.eval_loss for r in reference]
    assert [g.loss for r in remote for g in r.groups] == [g.loss for r in reference for g in r.groups]
    assert len(read_reports(tmp_path / "split" / REPORTS_NAME)) == 2


def test_tasks_come_in_lockstep_levels_with_the_groups_depths(tmp_path, six_device_fleet, minilm_slice_dir):
    """Level 0 holds both groups, level 1 only the group with two intra rounds; each task has its group's depth."""
    # Arrange
    fleet, _ = six_device_fleet
    plan, options = make_two_group_plan(fleet), _options(minilm_slice_dir, 1)
    split = _SplitExecutor(plan, fleet, options)
    driver = prepare_run(plan, fleet, options, device_ids=())
    # Act
    list(run_plan(plan, fleet, make_cost_model(2), options, tmp_path / "run", context=driver, executor=split))
    # Assert
    assert [(t.intra_round, t.group_index, t.depth) for t in split.tasks] == [(0, 0, 1), (0, 1, 2), (1, 0, 1)]
    assert [t.device_ids for t in split.tasks[:2]] == [g.device_ids for g in plan.groups]
    assert len(set(split.tasks[0].seeds + split.tasks[1].seeds + split.tasks[2].seeds)) == 9


def test_an_executor_that_drops_a_device_is_refused(tmp_path, small_fleet, minilm_slice_dir):
    """An executor answering with fewer updates than devices stops the round before anything is committed."""

    class _Lossy:
        def __init__(self, inner) -> None:
            self.inner = inner

        def train(self, tasks):
            return [updates[:-1] for updates in self.inner.train(tasks)]

        def close(self) -> None:
            pass

    fleet, _ = small_fleet
    plan, options = make_two_group_plan(fleet), _options(minilm_slice_dir, 1)
    context = prepare_run(plan, fleet, options)
    with pytest.raises(RuntimeError, match="updates for"):
        list(
            run_plan(
                plan,
                fleet,
                make_cost_model(2),
                options,
                tmp_path / "r",
                context=context,
                executor=_Lossy(InProcessExecutor(context)),
            )
        )
    assert not (tmp_path / "r" / REPORTS_NAME).exists() or read_reports(tmp_path / "r" / REPORTS_NAME) == []


def test_prepare_run_refuses_devices_outside_the_fleet(small_fleet, minilm_slice_dir):
    """Asking for the rows of an unknown device names it."""
    fleet, _ = small_fleet
    with pytest.raises(InvalidInputError) as info:
        prepare_run(make_two_group_plan(fleet), fleet, _options(minilm_slice_dir, 1), device_ids=("ghost",))
    assert [(i.path, i.got) for i in info.value.issues] == [("device_ids", "ghost")]
