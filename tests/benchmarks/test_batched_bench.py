"""The simulator's speed against a bare PyTorch + peft loop: the issue's ratios, measured side by side in one run.

The job (packaged MiniLM-L6, LoRA r 8 on query/value, seq 32, batch 16, AdamW at 2e-3): 20 WordNet devices of up
to 200 rows (Dirichlet 0.5), 5 local steps a round, a 2,000-row evaluation. The host is shared: start each
command in its own session, note ``uptime`` before and after, and compare only ratios taken in one run.
Figures go to ``extra_info`` and stdout; nothing is asserted about time, but every run checks its result.

1. Device-steps per CPU-second of one 10-device task at depth 1, 2 and 6 (``time.process_time``, every thread
   of the process): the sequential ``LocalTrainer``, the batched one (the run's default, chunks from the
   default ``batch_memory_mib`` and the measured activation bytes) and the bare loop at the same depth. Prefix
   cache warm (as from round 2 on)::

    uptime; setsid .venv/bin/python -m pytest tests/benchmarks/test_batched_bench.py -k group --benchmark-only -q -s

2. Rounds: one committed ``run_plan`` round of FedLoRA (one group of 20 at depth 6, the run's defaults, and
   the same with ``batched_devices=1``) and of the planned HierFedLoRA plan for the same devices (``make_plan``:
   2 groups, depths 1 or 2, tau up to 8, 5 local steps; cache warm), against the bare loop's FedLoRA round
   (train 20 devices, FedAvg, evaluate 2,000 rows). The evaluations alone are timed too, so the split of
   each round into training and evaluation is printed. Targets: FedLoRA round <= 0.5x the bare round's
   time; HierFedLoRA >= 5x the bare loop's device-steps per CPU-second::

    uptime; setsid .venv/bin/python -m pytest tests/benchmarks/test_batched_bench.py -k rounds --benchmark-only -q -s

3. Peak RSS: a fresh process per case runs one round (the FedLoRA plan, and the planned plan) at 20 and at 80
   devices with the run's defaults and reports its ``ru_maxrss`` and CPU seconds. Target: 80 devices under
   1.5 GB::

    uptime; setsid .venv/bin/python -m pytest tests/benchmarks/test_batched_bench.py -k rss --benchmark-only -q -s

The bare loop is what a user would write without this package: ``get_peft_model`` at the depth, one model,
each device loads the start adapters, builds AdamW, runs its steps on its tokenized rows (padded to 32) in
train mode; then FedAvg and a ``no_grad`` evaluation in batches of 128.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hierfedlora.commands.fleet import load_data
from hierfedlora.planner.fleet import make_fleet
from hierfedlora.planner.io import read_json
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.plan import make_plan
from hierfedlora.planner.types import CostModel, PlanningProblem, SolverOptions
from hierfedlora.runtime.batched_training import device_batching
from hierfedlora.runtime.engine import prepare_run, run_plan
from hierfedlora.runtime.executors.base import LocalTrainer, TrainTask
from hierfedlora.runtime.local_training import evaluate
from hierfedlora.runtime.options import RunOptions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.benchmark,
    pytest.mark.filterwarnings("ignore::hierfedlora.planner.errors.HierFedLoraWarning"),
]

SEQ, BATCH, STEPS, EVAL_ROWS, SEED = 32, 16, 5, 2000, 0
ROOT = Path(__file__).resolve().parents[2]


def _cost_model() -> CostModel:
    """The packaged model's measured costs (the paper preset's, seq 24), restated at seq 32 and batch 16.

    Activation bytes scale with the sequence length; they cap the batched chunks. Layer seconds only
    drive the simulated clock, which nothing here reads.
    """
    measured = read_json(CostModel, ROOT / "docs" / "results" / "paper" / "cost_model.json")
    scaled = round(measured.activation_bytes_per_sample_per_layer * SEQ / measured.seq_len)
    return dataclasses.replace(measured, batch_size=BATCH, seq_len=SEQ, activation_bytes_per_sample_per_layer=scaled)


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


def _fedlora(fleet) -> Plan:
    """One group of every device at full depth, one intra round of 5 steps: FedLoRA."""
    planned = _planned(fleet)
    group = dataclasses.replace(
        planned.groups[0], group_id=0, device_ids=planned.device_ids, depth=6, intra_rounds=1, local_steps=STEPS
    )
    return dataclasses.replace(planned, groups=(group,))


def _planned(fleet) -> Plan:
    """HierFedLoRA's plan for the fleet: 2 groups, depths 1 or 2, tau up to 8, 5 local steps of 16."""
    problem = PlanningProblem(
        devices=fleet.devices,
        cost_model=_cost_model(),
        num_groups=2,
        depth_choices=(1, 2),
        intra_rounds_choices=(1, 2, 4, 8),
        local_steps=STEPS,
        batch_size=BATCH,
        solver=SolverOptions(time_limit_s=30.0, seed=SEED),
    )
    return make_plan(problem)


def _options(**overrides) -> RunOptions:
    """The run's defaults at seq 32 with a 2,000-row evaluation (``overrides``: e.g. ``batched_devices=1``)."""
    return RunOptions(rounds=1, max_seq_len=SEQ, eval_samples=EVAL_ROWS, seed=SEED, **overrides)


def _steps(plan: Plan) -> int:
    return sum(len(g.device_ids) * g.intra_rounds * g.local_steps for g in plan.groups)


@dataclasses.dataclass
class Job:
    fleet: object
    context: object


@pytest.fixture(scope="module")
def job() -> Job:
    fleet = _fleet(20)
    return Job(fleet, prepare_run(_fedlora(fleet), fleet, _options()))


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

    def train_and_average(self, device_rows: list[torch.Tensor]) -> None:
        """Every device from the current adapters, then their sample-weighted FedAvg."""
        start = {n: p.detach().clone() for n, p in self.params.items()}
        states = [self.train(start, rows, seed) for seed, rows in enumerate(device_rows)]
        total = sum(rows.numel() for rows in device_rows)
        with torch.no_grad():
            for name in start:
                self.params[name].copy_(
                    sum(s[name] * (r.numel() / total) for s, r in zip(states, device_rows, strict=True))
                )


def _timed(function) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def _load() -> float:
    return os.getloadavg()[0]


def _print(title: str, figures: dict) -> None:
    sys.stdout.write(f"\n{title}: {json.dumps(figures, indent=1)}\n")


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
    batching = device_batching(_options(), _cost_model())
    sequential = LocalTrainer(context)
    batched = LocalTrainer(context, batching)
    bare = BareLoop(context, depth)
    bare_start = {n: p.detach().clone() for n, p in bare.params.items()}
    sequential.train_task(task)  # warm the cache and the allocator
    bare.train(bare_start, context.device_rows[ids[0]], 0)
    figures: dict = {"depth": depth, "devices": 10, "batched_chunk": batching.chunk_size(BATCH, depth)}
    results = {}
    for name, run in (
        ("sequential", lambda: results.setdefault("sequential", sequential.train_task(task))),
        ("batched", lambda: results.setdefault("batched", batched.train_task(task))),
        ("bare", lambda: [bare.train(bare_start, context.device_rows[d], s) for s, d in enumerate(ids)]),
    ):
        wall, cpu = _timed(run)
        figures[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "steps_per_cpu_s": 10 * STEPS / cpu}
    for one, many in zip(results["sequential"], results["batched"], strict=True):  # the same training
        assert abs(one.mean_loss - many.mean_loss) < 1e-4 and math.isfinite(one.mean_loss)
    rate = {name: figures[name]["steps_per_cpu_s"] for name in ("sequential", "batched", "bare")}
    figures["batched_over_sequential"] = rate["batched"] / rate["sequential"]
    figures["batched_over_bare"] = rate["batched"] / rate["bare"]
    figures["sequential_over_bare"] = rate["sequential"] / rate["bare"]
    figures["load_avg_1min"] = _load()
    benchmark.extra_info.update(figures)
    _print(f"group of 10 at depth {depth}", figures)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_rounds_against_the_bare_loop(benchmark, job, tmp_path):
    """FedLoRA round (depth 6) and the planned HierFedLoRA round against the bare loop's FedLoRA round."""
    fleet, context = job.fleet, job.context
    fedlora, planned = _fedlora(fleet), _planned(fleet)
    cost = _cost_model()
    for depth in sorted({g.depth for g in planned.groups}):  # rounds from the second on find the cache warm
        context.forward_for(depth)
        context.forward_source.warm(depth, torch.cat([context.device_rows[d] for d in planned.device_ids]))
        context.forward_source.warm(depth, context.eval_rows)
    figures: dict = {
        "planned_groups": [[len(g.device_ids), g.depth, g.intra_rounds, g.local_steps] for g in planned.groups]
    }
    for name, plan, options in (
        ("fedlora", fedlora, _options()),
        ("fedlora_sequential", fedlora, _options(batched_devices=1)),
        ("planned", planned, _options()),
    ):
        reports: list = []

        def one_round(p=plan, o=options, n=name, out=reports) -> None:
            out.extend(run_plan(p, fleet, cost, o, tmp_path / n, context=context))

        wall, cpu = _timed(one_round)
        assert len(reports) == 1 and math.isfinite(reports[0].eval_loss)
        figures[f"{name}_wall_s"], figures[f"{name}_cpu_s"] = wall, cpu
        figures[f"{name}_steps_per_cpu_s"] = _steps(plan) / cpu
        figures[f"{name}_eval_accuracy"] = reports[0].eval_accuracy
    forward = context.forward_for(6)  # one evaluation at full depth, as in the FedLoRA round
    figures["eval_wall_s"], figures["eval_cpu_s"] = _timed(
        lambda: evaluate(forward, context.data.labels, context.eval_rows, batch_size=_options().eval_batch_size)
    )
    bare = BareLoop(context, 6)
    rows = [context.device_rows[d] for d in fedlora.device_ids]
    bare.train({n: p.detach().clone() for n, p in bare.params.items()}, rows[0], 0)  # warm the allocator
    train_wall, train_cpu = _timed(lambda: bare.train_and_average(rows))
    eval_wall, eval_cpu = _timed(lambda: figures.setdefault("bare_eval_accuracy", bare.evaluate(context.eval_rows)))
    figures.update(
        bare_train_wall_s=train_wall, bare_train_cpu_s=train_cpu, bare_eval_wall_s=eval_wall, bare_eval_cpu_s=eval_cpu
    )
    bare_wall, bare_cpu = train_wall + eval_wall, train_cpu + eval_cpu
    figures.update(
        bare_round_wall_s=bare_wall, bare_round_cpu_s=bare_cpu, bare_steps_per_cpu_s=_steps(fedlora) / bare_cpu
    )
    figures["fedlora_over_bare_time"] = figures["fedlora_wall_s"] / bare_wall
    figures["fedlora_over_bare_cpu"] = figures["fedlora_cpu_s"] / bare_cpu
    figures["fedlora_sequential_over_bare_cpu"] = figures["fedlora_sequential_cpu_s"] / bare_cpu
    figures["eval_over_bare_eval_cpu"] = figures["eval_cpu_s"] / eval_cpu
    figures["planned_over_bare_steps_per_cpu_s"] = figures["planned_steps_per_cpu_s"] / figures["bare_steps_per_cpu_s"]
    figures["load_avg_1min"] = _load()
    benchmark.extra_info.update(figures)
    _print("rounds", figures)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


_RSS_SCRIPT = """
import json, resource, sys, tempfile
sys.path.insert(0, {root!r})
from tests.benchmarks.test_batched_bench import _cost_model, _fedlora, _fleet, _options, _planned
from hierfedlora.runtime.engine import run_plan
fleet = _fleet({devices})
plan = _{kind}(fleet)
with tempfile.TemporaryDirectory() as folder:
    (report,) = run_plan(plan, fleet, _cost_model(), _options(), folder)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"peak_rss_bytes": usage.ru_maxrss * 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "eval_accuracy": report.eval_accuracy, "wall_s": report.wall_time_s}}))
"""


@pytest.mark.parametrize("kind", ["fedlora", "planned"])
@pytest.mark.parametrize("devices", [20, 80])
def test_peak_rss(benchmark, devices, kind):
    """One round in a fresh process with the run's defaults: its peak resident set."""
    script = _RSS_SCRIPT.format(root=str(ROOT), devices=devices, kind=kind)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.0 <= figures["eval_accuracy"] <= 1.0
    figures.update(devices=devices, plan=kind, load_avg_1min=_load())
    benchmark.extra_info.update(figures)
    _print(f"peak RSS, {kind} at {devices} devices ({figures['peak_rss_bytes'] / 1e9:.2f} GB)", figures)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
