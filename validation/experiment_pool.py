"""An experiment's runs in worker processes: ``hierfedlora experiment --workers N``.

The runs of a preset are independent but for ``NAME@best`` methods, which wait for their setting's
explicit-rule runs (:mod:`hierfedlora.validation.method_rules`), and the closed loop, which waits for
its static run and starts from it (:mod:`hierfedlora.validation.loop_fork`). Where one run cannot keep a machine's
cores busy (many cores, small matrix products, Python between them), N processes of ``cores / N``
torch threads each finish the grid sooner than one process with every thread. On a 2-core host it
gains little: torch's two threads already keep both cores busy during training.

A run in a worker computes exactly what it computes in the command's own process with the same
torch thread count (each run has its own seed and run folder, and a worker prepares a setting's
model and rows as the one-process path does; ``tests/validation/test_experiments.py`` checks it bit
for bit). Against a one-process run with more threads, float sums are split differently, which
can move an evaluation row or two: on the paper preset at alpha 0.1, seed 0, one thread against two
left FedLoRA's and LEGEND-like's curves unchanged and moved HierFAVG's and HierFedLoRA's final
accuracy by 1 of 256 rows.

Each worker:

- is started with ``spawn`` (no copy of the parent's torch or solver threads);
- dies with the parent (``PR_SET_PDEATHSIG`` on Linux), so a killed experiment leaves no run behind
  that still writes; the run folder's lock (``runtime.run_folder.lock_folder``) refuses a second
  writer in any case;
- keeps the prepared model and rows of the last setting it ran, reused by its next run there.

A run that fails stops the experiment: the other workers are terminated (their runs resume from
their last committed round), and the error is raised in the parent as it was raised in the worker.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.types import DeviceProfile, Fleet, PlanningProblem
from hierfedlora.validation.experiment_presets import ExperimentPreset, RunResult, Setting
from hierfedlora.validation.experiment_run import RESULT_NAME, _run_one
from hierfedlora.validation.loop_fork import static_twin
from hierfedlora.validation.method_rules import is_best, resolve_best_rule, stage_order

__all__ = ["SettingInputs", "prepare_setting", "run_in_workers", "run_method", "threads_per_worker"]

_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class SettingInputs:
    """What every method of one setting shares: the fleet, the planning problem, the devices' true
    speeds (the clock's), the reference (FedLoRA) plan's budget and the folder of its runs."""

    setting: Setting
    fleet: Fleet
    problem: PlanningProblem
    truth: tuple[DeviceProfile, ...]
    budget_s: float
    folder: Path
    reference: Plan  # the FedLoRA plan: prepare_run loads the model and rows for it


def run_method(
    preset: ExperimentPreset, inputs: SettingInputs, method: str, context: object, resolved_rule: str | None
) -> RunResult:
    """Run (or resume, or read back) ``method`` on the setting of ``inputs`` (``experiment_run._run_one``);
    ``context`` is the setting's prepared model and rows (``None`` only to read back a finished run)."""
    return _run_one(
        preset,
        method,
        inputs.setting,
        inputs.problem,
        inputs.fleet,
        inputs.truth,
        inputs.budget_s,
        inputs.folder / method,
        context,
        resolved_rule,
    )


def prepare_setting(preset: ExperimentPreset, inputs: SettingInputs) -> object:
    """The model and tokenized rows every method of the setting trains from (``runtime.engine.prepare_run``
    for its FedLoRA plan, which touches every device)."""
    from hierfedlora.runtime.engine import prepare_run
    from hierfedlora.runtime.options import RunOptions

    seed = inputs.setting.seed
    options = RunOptions(rounds=1, max_seq_len=preset.max_seq_len, eval_samples=preset.eval_samples, seed=seed)
    return prepare_run(inputs.reference, inputs.fleet, options)


def threads_per_worker(workers: int, cores: int) -> int:
    """Torch threads for each of ``workers`` processes on ``cores`` cores: an equal share, at least one.

    >>> threads_per_worker(2, 2), threads_per_worker(3, 8), threads_per_worker(4, 2)
    (1, 2, 1)
    """
    return max(1, cores // workers)


# ---- in the worker -------------------------------------------------------------------------------

_WORKER: dict[str, object] = {}


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit now if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the run folder's lock still refuses a second writer
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _start_worker(parent_pid: int, threads: int, preset: ExperimentPreset) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates us
    import torch

    torch.set_num_threads(threads)
    _WORKER["preset"] = preset


def _run_in_worker(inputs: SettingInputs, method: str, resolved_rule: str | None) -> RunResult:
    preset = _WORKER["preset"]
    assert isinstance(preset, ExperimentPreset)
    if _WORKER.get("setting") != inputs.setting:  # one setting's model and rows at a time
        _WORKER.pop("context", None)
        _WORKER["context"] = prepare_setting(preset, inputs)
        _WORKER["setting"] = inputs.setting
    return run_method(preset, inputs, method, _WORKER["context"], resolved_rule)


# ---- in the parent -------------------------------------------------------------------------------


def run_in_workers(
    preset: ExperimentPreset,
    settings: Sequence[SettingInputs],
    workers: int,
    progress: Callable[[str], None] | None = None,
    on_result: Callable[[SettingInputs, RunResult], None] | None = None,
) -> dict[Setting, dict[str, RunResult]]:
    """Run every method of every setting in ``workers`` processes; return each setting's results by method.

    Finished runs are read back here, not sent to a worker. ``progress`` gets ``"k/total ..."`` as
    the k-th run finishes; ``on_result`` is called with each result as it arrives.
    """
    from hierfedlora.validation.experiment_outputs import _cpu_count

    total = len(settings) * len(preset.methods)
    done: dict[Setting, dict[str, RunResult]] = {inputs.setting: {} for inputs in settings}
    finished = 0

    def record(inputs: SettingInputs, method: str, result: RunResult) -> None:
        nonlocal finished
        done[inputs.setting][method] = result
        finished += 1
        if progress:
            setting = inputs.setting
            progress(f"{min(finished + 1, total)}/{total} finished {setting.label} seed {setting.seed} {method}")
        if on_result:
            on_result(inputs, result)

    context = multiprocessing.get_context("spawn")
    threads = threads_per_worker(workers, _cpu_count())
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(), threads, preset)
    )
    pending: dict[concurrent.futures.Future[RunResult], tuple[SettingInputs, str]] = {}
    submitted: set[tuple[Setting, str]] = set()

    def submit(inputs: SettingInputs, method: str) -> None:
        submitted.add((inputs.setting, method))
        resolved = resolve_best_rule(list(done[inputs.setting].values())) if is_best(method) else None
        if (inputs.folder / method / RESULT_NAME).exists():  # read back here: the context is never touched
            record(inputs, method, run_method(preset, inputs, method, None, resolved))
            return
        pending[pool.submit(_run_in_worker, inputs, method, resolved)] = (inputs, method)

    explicit = [m for m in preset.methods if not is_best(m)]

    def ready(inputs: SettingInputs, method: str) -> bool:
        """`@best` waits for every explicit rule; a closed loop for its static run (``validation.loop_fork``)."""
        ran = done[inputs.setting]
        if is_best(method):
            return all(m in ran for m in explicit)
        twin = static_twin(method, preset.methods)
        return twin is None or twin in ran

    def submit_ready(inputs: SettingInputs) -> None:
        for method in stage_order(preset.methods):
            if (inputs.setting, method) not in submitted and ready(inputs, method):
                submit(inputs, method)

    try:
        for inputs in settings:
            submit_ready(inputs)
        while pending:
            completed, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in completed:
                inputs, method = pending.pop(future)
                record(inputs, method, future.result())  # a worker's error is raised here
                submit_ready(inputs)
    except BaseException:
        for process in multiprocessing.active_children():  # the pool's workers: their runs resume later
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return done
