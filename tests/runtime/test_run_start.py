"""A run resumes only under the settings it was started with: a changed learning rate, seed or fault option was
taken silently and gave another run than the uninterrupted one."""

from __future__ import annotations

import dataclasses

import pytest

from hierfedlora.planner.errors import ResumeMismatchError
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from hierfedlora.runtime.engine import run_plan
from hierfedlora.runtime.faults import FaultOptions
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.run_start import _check_settings, run_settings
from tests.factories import make_cost_model, make_two_group_plan
from tests.runtime.runs import run_options

BASE = RunOptions(rounds=3, model="default", seed=3)
CHANGED = {
    "learning_rate": 1e-2,
    "optimizer": "sgd",
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "max_seq_len": 32,
    "eval_samples": 64,
    "evaluate_groups": False,
    "evaluate_intra_rounds": True,
    "clock_noise": 0.1,
    "backhaul_mbps": 5.0,
    "server_ingress_mbps": 100.0,
    "intra_latency_s": 0.5,
    "global_latency_s": 2.0,
    "seed": 4,
    "aggregation": "ffa",
    "hetlora_prune_gamma": 0.5,
}


def test_every_setting_that_decides_the_run_is_compared():
    """The list above covers every RunOptions field but those a resume may change."""
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    free = {"rounds", "model", "use_prefix_cache", "prefix_cache_max_mib", "schema_version"}
    assert fields - set(CHANGED) == free | {"batched_devices", "batch_memory_mib", "pack_tokens", "eval_batch_size"}


@pytest.mark.parametrize(("field", "value"), CHANGED.items())
def test_a_changed_option_is_refused_naming_it(field, value):
    """Each option that decides the computation, changed, is a resume mismatch naming options.<field>."""
    # Arrange
    recorded = run_settings(BASE, None)
    # Act
    with pytest.raises(ResumeMismatchError) as info:
        _check_settings(recorded, run_settings(dataclasses.replace(BASE, **{field: value}), None))
    # Assert
    assert (info.value.field, info.value.expected, info.value.found) == (
        f"options.{field}",
        value,
        getattr(BASE, field),
    )


def test_rounds_model_and_exact_caches_may_change_and_faults_may_not():
    """More rounds, another model path (its sha256 is checked apart), the cache or the memory settings (a run
    stopped for memory resumes with less) or token packing (the same values) resume; faults do not; a checkpoint
    without recorded settings (an older folder) resumes as before."""
    # Arrange
    recorded = run_settings(BASE, FaultOptions(dropout=0.2))
    free = dataclasses.replace(
        BASE,
        rounds=9,
        model="/x",
        use_prefix_cache=False,
        prefix_cache_max_mib=1,
        batched_devices=1,
        batch_memory_mib=8,
        pack_tokens=False,
    )
    # Act
    _check_settings(recorded, run_settings(free, FaultOptions(dropout=0.2)))
    _check_settings("", run_settings(BASE, None))
    with pytest.raises(ResumeMismatchError) as info:
        _check_settings(recorded, run_settings(BASE, FaultOptions(dropout=0.3)))
    with pytest.raises(ResumeMismatchError) as none:
        _check_settings(recorded, run_settings(BASE, None))
    # Assert
    assert (info.value.field, info.value.expected, info.value.found) == ("faults.dropout", 0.3, 0.2)
    assert none.value.field == "faults"


def test_run_plan_refuses_to_resume_under_another_learning_rate(tmp_path, small_fleet, minilm_slice_dir):
    """One committed round, then a resume with another learning rate: refused before any training, the log untouched;
    the same options resume."""
    # Arrange
    fleet, _ = small_fleet
    plan, cost = make_two_group_plan(fleet), make_cost_model(2)
    list(run_plan(plan, fleet, cost, run_options(minilm_slice_dir, 1), tmp_path / "run"))
    other = run_options(minilm_slice_dir, 2, learning_rate=0.05)
    # Act
    with pytest.raises(ResumeMismatchError) as info:
        list(run_plan(plan, fleet, cost, other, tmp_path / "run", resume=True))
    rounds_before = [r.global_round for r in read_reports(tmp_path / "run" / REPORTS_NAME)]
    resumed = list(run_plan(plan, fleet, cost, run_options(minilm_slice_dir, 2), tmp_path / "run", resume=True))
    # Assert
    assert info.value.field == "options.learning_rate"
    assert rounds_before == [1]
    assert [r.global_round for r in resumed] == [2]
