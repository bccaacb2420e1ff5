"""Worker processes of `hierfedlora experiment --workers`: they die with the experiment that started them.

That the workers' results equal the in-process ones, bit for bit, is checked end to end by
``test_experiments.py::test_a_preset_runs_from_the_cli_resumes_and_calibrates``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hierfedlora.validation.experiment_pool import threads_per_worker

_PARENT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    from hierfedlora.validation.experiment_pool import _die_with_parent

    def child(parent_pid):
        _die_with_parent(parent_pid)
        print(os.getpid(), flush=True)  # after the death signal is set
        time.sleep(120)

    if __name__ == "__main__":
        worker = multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(),))
        worker.start()
        time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_when_its_experiment_is_killed(tmp_path):
    """SIGKILL the process that started a worker: the worker goes too, so no run is left writing its folder."""
    # Arrange
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())  # the worker's pid, once its death signal is set
    assert _alive(worker)
    # Act
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Assert
    assert not _alive(worker)


def test_workers_share_the_cores_as_torch_threads():
    """Each worker gets an equal share of the cores, never none."""
    assert [threads_per_worker(w, 8) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
