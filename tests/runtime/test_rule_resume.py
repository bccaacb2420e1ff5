"""Rules that keep run state beyond the adapters resume bit for bit after SIGKILL, in a fresh process.

FedEx-LoRA and FLoRA write into the frozen weights; the run keeps that as a base delta beside the adapters
(``models.base_delta``), checkpointed as ``base.<module>``. HetLoRA's groups prune their ranks
(``runtime.rank_pruning``), checkpointed as ``rank.<group_id>`` (here with gamma 0: one component a round).
The other rules keep no state across rounds beyond the adapters, which ``tests/runtime/test_engine.py``'s
SIGKILL test covers. Each run here is killed
twice: by the checkpoint's crash hook right after round 1 is committed and before its report is written
(the (R2) window), then, resumed, with SIGKILL while it trains round 3. Tolerance: none (bit for bit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from hierfedlora.planner.io import write_json
from hierfedlora.runtime.checkpoint import CRASH_AFTER_COMMIT_ENV, REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.prefix_cache import PrefixCache
from hierfedlora.runtime.rank_pruning import RANK_PREFIX
from hierfedlora.runtime.run_start import BASE_PREFIX
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import cli_run_args, committed_tensors, comparable

ROUNDS = 4


def _comparable(run_dir) -> list[dict]:
    return [comparable(report) for report in read_reports(run_dir / REPORTS_NAME)]


def _kill_when_committed(args: list[str], reports_path, lines: int) -> tuple[int, int]:
    """Start ``args``, SIGKILL it once ``reports_path`` holds ``lines`` lines; (exit code, rounds committed)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 3600  # a safety cap only: on a loaded 2-core host a round can take minutes
    while time.monotonic() < deadline and process.poll() is None:
        if reports_path.exists() and reports_path.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.02)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return process.returncode, len(read_reports(reports_path))


@pytest.mark.parametrize("rule", ["fedex", "flora", "hetlora"])
def test_sigkill_twice_then_resume_matches_for_a_stateful_rule(tmp_path, small_fleet, minilm_slice_dir, rule):
    """Killed after a commit and mid-round, then resumed: adapters, base deltas and reports equal the whole run's."""
    # Arrange
    fleet, fleet_path = small_fleet
    plan_path, cost_path = tmp_path / "plan.json", tmp_path / "cost.json"
    write_json(plan_path, make_two_group_plan(fleet))
    write_json(cost_path, make_cost_model(2))

    def cli(out, resume=False):
        args = cli_run_args(plan_path, fleet_path, cost_path, minilm_slice_dir, tmp_path / out, ROUNDS, resume=resume)
        return [*args, "--aggregation", rule, *(["--hetlora-prune-gamma", "0"] if rule == "hetlora" else [])]

    # the uninterrupted run goes beside the interrupted ones (a second core, where there is one), joined below
    with (tmp_path / "whole.log").open("w") as whole_log:
        whole_run = subprocess.Popen(cli("whole"), stdout=subprocess.DEVNULL, stderr=whole_log)
    cut_reports = tmp_path / "cut" / REPORTS_NAME
    # Act: (1) the crash hook kills the run after committing round 1's checkpoint, before its report line
    hooked = subprocess.run(cli("cut"), env={**os.environ, CRASH_AFTER_COMMIT_ENV: "1"}, capture_output=True)
    # (2) resumed, it is killed while training round 3; (3) resumed again, it runs to the end
    mid_round_exit, committed = _kill_when_committed(cli("cut", resume=True), cut_reports, lines=2)
    finished = subprocess.run(cli("cut", resume=True), capture_output=True, text=True)
    whole_run.wait()
    # Assert
    assert whole_run.returncode == 0, (tmp_path / "whole.log").read_text()
    assert hooked.returncode == -signal.SIGKILL
    assert mid_round_exit == -signal.SIGKILL, f"the resumed run ended by itself (exit {mid_round_exit})"
    assert 2 <= committed < ROUNDS
    assert finished.returncode == 0, finished.stderr
    whole, cut = committed_tensors(tmp_path / "whole"), committed_tensors(tmp_path / "cut")
    state_prefix = RANK_PREFIX if rule == "hetlora" else BASE_PREFIX
    assert any(key.startswith(state_prefix) for key in whole)  # the rule did keep run state
    assert whole.keys() == cut.keys()
    assert [key for key in whole if not torch.equal(whole[key], cut[key])] == []
    assert _comparable(tmp_path / "cut") == _comparable(tmp_path / "whole")


@pytest.mark.parametrize("rule", ["fedex", "flora"])
def test_a_context_prepared_for_another_rule_runs_a_base_changing_rule_exactly(
    tmp_path, small_fleet, minilm_slice_dir, rule
):
    """A shared context holding a frozen-prefix cache (prepared for FedAvg) gives this rule's own run, bit for bit.

    This was the cause of a fresh-process resume differing from an uninterrupted run: the in-process run
    reused a context whose cached prefix states came from the pristine base, stale once the rule's base
    delta changed the frozen layers below the depth-1 group; a fresh process builds the plain forward.
    """
    # Arrange
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)

    def options(aggregation: str) -> RunOptions:
        return RunOptions(
            rounds=2, model=str(minilm_slice_dir), eval_samples=16, eval_batch_size=16, seed=3, aggregation=aggregation
        )

    shared = prepare_run(plan, fleet, options("fedavg"))
    own = prepare_run(plan, fleet, options(rule))
    # Act
    from_shared = list(run_plan(plan, fleet, cost, options(rule), tmp_path / "shared", context=shared))
    from_own = list(run_plan(plan, fleet, cost, options(rule), tmp_path / "own", context=own))
    # Assert
    assert isinstance(shared.forward_source, PrefixCache)  # the cache was there to be misused
    assert [r.eval_loss for r in from_shared] == [r.eval_loss for r in from_own]
    a, b = committed_tensors(tmp_path / "shared"), committed_tensors(tmp_path / "own")
    assert a.keys() == b.keys() and [key for key in a if not torch.equal(a[key], b[key])] == []
