"""Shared fixtures: a toy cost model shaped like the default model's, and an 8-device fleet."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from hierfedlora.models.catalog import ModelSpec, resolve_model_dir
from hierfedlora.planner.types import CostModel, DeviceProfile
from hierfedlora.validation.experiment_pool import threads_per_worker
from tests.factories import WORDS, make_cost_model

# Property tests assert behaviour, never speed: generating nested examples or running one can take seconds on a
# loaded 2-core host, which hypothesis' defaults (200 ms deadline, too_slow health check) would report as failures.
settings.register_profile("hierfedlora", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("hierfedlora")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# The suite runs in pytest-xdist workers (pyproject's addopts). Each worker takes its share of the cores for torch,
# in this process and in the commands its tests start (they inherit OMP_NUM_THREADS), so that two workers do not
# each spin two OpenMP threads on a 2-core host.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _threads = threads_per_worker(_workers, _cores())  # the share `hierfedlora experiment --workers` gives
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

# What the README's set-up installs and some tests need. A test that needs a missing one would be skipped, so a
# broken set-up could pass unnoticed: the session refuses to start instead (set HIERFEDLORA_ALLOW_MISSING_EXTRAS=1
# to run the rest without them).
REQUIRED_MODULES = {"ray": "hierfedlora[ray]", "flwr": "hierfedlora[flower]", "psutil": "hierfedlora[flower]"}


MAX_WORKERS = 4  # each worker holds its own models and data: more would cost memory for little


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): one worker a core, at most :data:`MAX_WORKERS`; none (one process) when
    benchmarks run, since pytest-benchmark measures nothing inside xdist workers."""
    if config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False):
        return 0
    return max(1, min(MAX_WORKERS, _cores()))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``ray`` start Ray clusters (their own, or Flower's simulation): they run in one worker, one
    after another (``--dist loadgroup``), and first, since together they are the suite's longest share."""
    uses_ray = [item for item in items if item.get_closest_marker("ray")]
    for item in uses_ray:
        item.add_marker(pytest.mark.xdist_group("ray"))
    items[:] = uses_ray + [item for item in items if not item.get_closest_marker("ray")]


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("HIERFEDLORA_ALLOW_MISSING_EXTRAS"):
        return
    from hierfedlora.planner.fleets.data_sources import JANEAUSTEN_DATA_PATH
    from hierfedlora.planner.fleets.datasets import WORDNET_NOUN_PATH

    missing = [
        f"{name} (from {extra})" for name, extra in REQUIRED_MODULES.items() if not importlib.util.find_spec(name)
    ]
    missing += [
        f"{path} (scripts/setup.sh installs it)"
        for path in (WORDNET_NOUN_PATH, f"{JANEAUSTEN_DATA_PATH}.rdx")
        if not Path(path).exists()
    ]
    if missing:
        raise pytest.UsageError(
            "the test suite needs what `bash scripts/setup.sh` installs; missing: "
            + ", ".join(missing)
            + ". Run the set-up, or set HIERFEDLORA_ALLOW_MISSING_EXTRAS=1 to skip the tests that need them."
        )


@pytest.fixture
def cost_model() -> CostModel:
    return make_cost_model()


@pytest.fixture
def tiny_fleet() -> tuple[DeviceProfile, ...]:
    """Eight devices, four classes, each device dominated by one or two classes."""
    counts = [
        (30, 0, 0, 2),
        (0, 30, 2, 0),
        (2, 0, 30, 0),
        (0, 2, 0, 30),
        (15, 15, 0, 0),
        (0, 0, 15, 15),
        (15, 0, 15, 0),
        (0, 15, 0, 15),
    ]
    scales = [1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0]
    return tuple(
        DeviceProfile(
            device_id=f"d{i}", label_counts=c, compute_scale=s, memory_bytes=2**31, uplink_mbps=20.0, downlink_mbps=50.0
        )
        for i, (c, s) in enumerate(zip(counts, scales, strict=True))
    )


# Model fixtures (real pretrained weights, offline): used by tests/models and tests/runtime.


@pytest.fixture(scope="session")
def minilm_slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the default model's embeddings and first 2 layers, with its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_model_dir("default")
    model = AutoModel.from_pretrained(source, local_files_only=True)
    model.encoder.layer = model.encoder.layer[:2]
    model.config.num_hidden_layers = 2
    folder = tmp_path_factory.mktemp("minilm-2-layers")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def minilm_four_layer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's embeddings and first 4 layers, with its tokenizer (room for non-contiguous layer sets)."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_model_dir("default")
    model = AutoModel.from_pretrained(source, local_files_only=True)
    model.encoder.layer = model.encoder.layer[:4]
    model.config.num_hidden_layers = 4
    folder = tmp_path_factory.mktemp("minilm-4-layers")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(folder)
    return folder


@pytest.fixture
def slice_spec(minilm_slice_dir: Path) -> ModelSpec:
    """LoRA r=8 on query/value of the 2-layer slice, 4 classes."""
    return ModelSpec(path=str(minilm_slice_dir), num_labels=4)


def _word_tokenizer() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def _decoder_config(kind: str) -> object:
    from transformers import GPT2Config, LlamaConfig

    common = {"vocab_size": len(WORDS), "bos_token_id": 1, "eos_token_id": 1}
    if kind == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **common)
    return LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **common,
    )


@pytest.fixture(scope="session")
def make_decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build (once per kind) a random 2-layer ``"gpt2"`` or ``"llama"`` model folder with a tokenizer."""
    from transformers import AutoModel

    built: dict[str, Path] = {}

    def make(kind: str) -> Path:
        if kind not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{kind}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                AutoModel.from_config(_decoder_config(kind)).save_pretrained(folder)
            _word_tokenizer().save_pretrained(folder)
            built[kind] = folder
        return built[kind]

    return make


@pytest.fixture
def texts() -> list[str]:
    """Two short glosses of different lengths (so padding and attention masks matter)."""
    return ["a dog is an animal", "cake"]
