"""Batched device training against sequential training and a bare PyTorch + peft loop (issue targets as ratios).

Run with (the host is shared: start it in its own session and note the load)::

    uptime; setsid .venv/bin/python -m pytest tests/benchmarks/test_batched_bench.py --benchmark-only -q -s

The job (all on the packaged MiniLM-L6, LoRA r 8 on query/value, seq 32, batch 16, AdamW): 20 WordNet
devices of up to 200 rows (Dirichlet 0.5), 5 local steps a round, a 2,000-row evaluation.

- ``test_group_device_steps_per_cpu_second``: one 10-device task at depth 1, 2 and 6; device-steps per
  CPU-second (``time.process_time``, every thread of the process) of the sequential ``LocalTrainer``, the
  batched one, and the bare loop (below, at the same depth). Prefix cache warm (as from round 2 on).
- ``test_rounds_against_the_bare_loop``: one committed ``run_plan`` round of FedLoRA (one group, depth 6) and
  of a planned HierFedLoRA plan (two groups of 10: depth 1 with tau 8, depth 2 with tau 4), against the bare
  loop's FedLoRA round (train 20 devices, FedAvg, evaluate 2,000 rows). Targets: FedLoRA round <= 0.5x the
  bare round's time; HierFedLoRA >= 5x the bare loop's device-steps per CPU-second.
- ``test_peak_rss``: a fresh process runs one planned round at 20 and at 80 devices (batched) and reports
  its ``ru_maxrss``. Target: 80 devices under 1.5 GB.

The bare loop is what a user would write without this package: ``get_peft_model`` at the depth, one model,
each device loads the start adapters, builds AdamW, runs its steps on its tokenized rows in train mode; then
FedAvg and a ``no_grad`` evaluation in batches of 128. Figures go to ``extra_info`` and stdout; nothing is
asserted about time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hierfedlora.commands.fleet import load_data
from hierfedlora.planner.fleet import make_fleet
from hierfedlora.planner.outcomes import Plan
from hierfedlora.runtime.batched_training import DeviceBatching
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.executors.base import LocalTrainer, TrainTask
from hierfedlora.runtime.options import RunOptions
from tests.factories import make_cost_model, make_two_group_plan

pytestmark = [pytest.mark.slow, pytest.mark.benchmark]

SEQ, BATCH, STEPS, EVAL_ROWS, SEED = 32, 16, 5, 2000, 0


def _fleet(num_devices: int):
    return make_fleet(
        load_data("wordnet", "text", "label"),
        num_devices=num_devices,
        partition="dirichlet",
        alpha=0.5,
        tier_mix="paper",
        max_samples_per_device=200,
        seed=SEED,
    )


def _plan(fleet, groups: list[tuple[int, int, int]]) -> Plan:
    """Groups as (devices, depth, tau) taken in fleet order; 5 local steps, batch 16."""
    template = make_two_group_plan(fleet, batch_size=BATCH)
    ids, start, made = [d.device_id for d in fleet.devices], 0, []
    for k, (count, depth, tau) in enumerate(groups):
        made.append(
            dataclasses.replace(
                template.groups[0],
                group_id=k,
                device_ids=tuple(ids[start : start + count]),
                depth=depth,
                intra_rounds=tau,
                local_steps=STEPS,
            )
        )
        start += count
    return dataclasses.replace(template, groups=tuple(made))


def _options(batched: int) -> RunOptions:
    return RunOptions(
        rounds=1, max_seq_len=SEQ, eval_samples=EVAL_ROWS, seed=SEED, batched_devices=batched, batch_memory_mib=512
    )


@dataclasses.dataclass
class Job:
    fleet: object
    context: object


@pytest.fixture(scope="module")
def job() -> Job:
    fleet = _fleet(20)
    plan = _plan(fleet, [(20, 6, 1)])
    return Job(fleet, prepare_run(plan, fleet, _options(1)))


class BareLoop:
    """Plain PyTorch + peft: a peft model at one depth, devices trained one after another."""

    def __init__(self, context, depth: int) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForSequenceClassification

        from hierfedlora.models.catalog import resolve_model_dir

        torch.manual_seed(SEED)
        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_dir("default"), num_labels=int(context.data.labels.max()) + 1
        )
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["query", "value"],
            layers_to_transform=list(range(6 - depth, 6)),
            layers_pattern="layer",
            modules_to_save=["classifier"],
        )
        self.model = get_peft_model(base, config)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.data = context.data

    def train(self, start: dict[str, torch.Tensor], rows: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for name, value in start.items():
                self.params[name].copy_(value)
        optimizer = torch.optim.AdamW(self.params.values(), lr=2e-3, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        self.model.train()
        for _ in range(STEPS):
            batch = rows[torch.randperm(rows.numel(), generator=generator)[:BATCH]]
            optimizer.zero_grad(set_to_none=True)
            loss = self.model(
                input_ids=self.data.input_ids[batch],
                attention_mask=self.data.attention_mask[batch],
                labels=self.data.labels[batch],
            ).loss
            loss.backward()
            optimizer.step()
        return {name: p.detach().clone() for name, p in self.params.items()}

    def evaluate(self, rows: torch.Tensor) -> float:
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, rows.numel(), 128):
                batch = rows[start : start + 128]
                logits = self.model(
                    input_ids=self.data.input_ids[batch], attention_mask=self.data.attention_mask[batch]
                ).logits
                correct += int((logits.argmax(-1) == self.data.labels[batch]).sum())
        return correct / rows.numel()

    def round(self, device_rows: list[torch.Tensor], eval_rows: torch.Tensor) -> float:
        start = {n: p.detach().clone() for n, p in self.params.items()}
        states = [self.train(start, rows, seed) for seed, rows in enumerate(device_rows)]
        total = sum(rows.numel() for rows in device_rows)
        with torch.no_grad():
            for name in start:
                self.params[name].copy_(
                    sum(s[name] * (r.numel() / total) for s, r in zip(states, device_rows, strict=True))
                )
        return self.evaluate(eval_rows)


def _timed(function) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def _load() -> float:
    return os.getloadavg()[0]


@pytest.mark.parametrize("depth", [1, 2, 6])
def test_group_device_steps_per_cpu_second(benchmark, job, depth):
    """A 10-device task: device-steps per CPU-second, sequential vs batched vs the bare loop, side by side."""
    context = job.context
    ids = tuple(d.device_id for d in job.fleet.devices[:10])
    context.forward_for(depth)
    start = context.model.get_adapter_state()
    task = TrainTask(
        global_round=1,
        intra_round=0,
        group_index=0,
        depth=depth,
        layers=None,
        device_ids=ids,
        seeds=tuple(range(10)),
        start_state=start,
        local_steps=STEPS,
        batch_size=BATCH,
        learning_rate=2e-3,
        optimizer="adamw",
    )
    sequential = LocalTrainer(context)
    batched = LocalTrainer(
        context, DeviceBatching(max_devices=10, memory_mib=1024, activation_bytes_per_sample_per_layer=1)
    )
    bare = BareLoop(context, depth)
    bare_start = {n: p.detach().clone() for n, p in bare.params.items()}
    sequential.train_task(task)  # warm the cache and the allocator
    figures = {}
    for name, run in (
        ("sequential", lambda: sequential.train_task(task)),
        ("batched", lambda: batched.train_task(task)),
        ("bare", lambda: [bare.train(bare_start, context.device_rows[d], s) for s, d in enumerate(ids)]),
    ):
        wall, cpu = _timed(run)
        figures[name] = {"wall_s": wall, "cpu_s": cpu, "steps_per_cpu_s": 10 * STEPS / cpu}
    figures["batched_over_sequential"] = (
        figures["batched"]["steps_per_cpu_s"] / figures["sequential"]["steps_per_cpu_s"]
    )
    figures["batched_over_bare"] = figures["batched"]["steps_per_cpu_s"] / figures["bare"]["steps_per_cpu_s"]
    figures["load_avg_1min"] = _load()
    benchmark.extra_info.update(figures)
    sys.stdout.write(f"\ndepth {depth}: {json.dumps(figures)}\n")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_rounds_against_the_bare_loop(benchmark, job, tmp_path):
    """FedLoRA round (depth 6) and a planned HierFedLoRA round against the bare loop's FedLoRA round."""
    fleet, context = job.fleet, job.context
    fedlora = _plan(fleet, [(20, 6, 1)])
    planned = _plan(fleet, [(10, 1, 8), (10, 2, 4)])
    cost = dataclasses.replace(make_cost_model(), batch_size=BATCH, seq_len=SEQ)
    for depth in (1, 2):  # rounds from the second on find the cache warm
        context.forward_for(depth)
        context.forward_source.warm(depth, torch.cat([context.device_rows[d] for d in planned.device_ids]))
        context.forward_source.warm(depth, context.eval_rows)
    figures: dict[str, float] = {}
    for name, plan, batched in (
        ("fedlora_sequential", fedlora, 1),
        ("fedlora_batched", fedlora, 20),
        ("planned_batched", planned, 20),
    ):
        folder = tmp_path / name
        wall, cpu = _timed(
            lambda p=plan, b=batched, f=folder: list(run_plan(p, fleet, cost, _options(b), f, context=context))
        )
        steps = sum(len(g.device_ids) * g.intra_rounds * g.local_steps for g in plan.groups)
        figures[f"{name}_wall_s"], figures[f"{name}_cpu_s"] = wall, cpu
        figures[f"{name}_steps_per_cpu_s"] = steps / cpu
    bare = BareLoop(context, 6)
    rows = [context.device_rows[d] for d in fedlora.device_ids]
    wall, cpu = _timed(lambda: bare.round(rows, context.eval_rows))
    figures["bare_fedlora_wall_s"], figures["bare_fedlora_cpu_s"] = wall, cpu
    figures["bare_steps_per_cpu_s"] = 20 * STEPS / cpu
    figures["fedlora_batched_over_bare_time"] = figures["fedlora_batched_wall_s"] / wall
    figures["fedlora_batched_over_bare_cpu"] = figures["fedlora_batched_cpu_s"] / cpu
    figures["fedlora_sequential_over_bare_time"] = figures["fedlora_sequential_wall_s"] / wall
    figures["planned_over_bare_steps_per_cpu_s"] = (
        figures["planned_batched_steps_per_cpu_s"] / figures["bare_steps_per_cpu_s"]
    )
    figures["load_avg_1min"] = _load()
    benchmark.extra_info.update(figures)
    sys.stdout.write(f"\nrounds: {json.dumps(figures)}\n")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


_RSS_SCRIPT = """
import dataclasses, json, resource, sys, tempfile
sys.path.insert(0, {root!r})
from tests.benchmarks.test_batched_bench import _fleet, _plan, _options, BATCH, SEQ
from tests.factories import make_cost_model
from hierfedlora.runtime.engine import run_plan
fleet = _fleet({devices})
half = {devices} // 2
plan = _plan(fleet, [(half, 1, 8), ({devices} - half, 2, 4)])
cost = dataclasses.replace(make_cost_model(), batch_size=BATCH, seq_len=SEQ)
with tempfile.TemporaryDirectory() as folder:
    list(run_plan(plan, fleet, cost, _options(20), folder))
print(json.dumps({{"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


@pytest.mark.parametrize("devices", [20, 80])
def test_peak_rss(benchmark, devices):
    """One planned, batched round in a fresh process: its peak resident set."""
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT.format(root=root, devices=devices)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_bytes"]
    benchmark.extra_info.update({"devices": devices, "peak_rss_bytes": peak, "load_avg_1min": _load()})
    sys.stdout.write(f"\npeak RSS at {devices} devices: {peak / 1e9:.2f} GB\n")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
