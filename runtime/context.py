"""What a run holds in memory, and the checks before it starts: :func:`prepare_run` loads the model and
the data a plan touches, tokenizes them once and refuses a plan that cannot run (:func:`check_plan_for_run`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hierfedlora.models.catalog import ModelSpec, model_sha256, resolve_model_dir
from hierfedlora.models.lora import AdaptedModel, load_adapted_model
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.fleets.datasets import read_dataset
from hierfedlora.planner.io import sha256_of
from hierfedlora.planner.outcomes import Plan
from hierfedlora.planner.plan_checks import check_plan_groups
from hierfedlora.planner.types import Fleet
from hierfedlora.runtime.aggregation_rules import get_rule
from hierfedlora.runtime.data import TokenizedData, tokenize_texts
from hierfedlora.runtime.forward import Forward, PlainForward
from hierfedlora.runtime.local_training import derive_seed
from hierfedlora.runtime.memory import release_freed_memory
from hierfedlora.runtime.options import RunOptions
from hierfedlora.runtime.prefix_cache import PrefixCache

__all__ = ["RunContext", "check_plan_for_run", "prepare_run"]


def check_plan_for_run(plan: Plan, fleet: Fleet, num_layers: int, lora_rank: int | None = None) -> list[Issue]:
    """Issues that stop ``plan`` from running on ``fleet`` with a ``num_layers``-layer model of rank ``lora_rank``."""
    issues = check_plan_groups(plan, num_layers=num_layers, full_rank=lora_rank)
    positions = {device.device_id: idx for idx, device in enumerate(fleet.devices)}
    if fleet.dataset is None or not fleet.sample_indices:
        issues.append(
            Issue("fleet.sample_indices", "per-device sample indices (make the fleet with 'hierfedlora fleet')", "none")
        )
    for k, group in enumerate(plan.groups):
        for device_id in group.device_ids:
            if device_id not in positions:
                issues.append(Issue(f"groups[{k}].device_ids", "ids of devices in the fleet", device_id))
            elif fleet.sample_indices and not fleet.sample_indices[positions[device_id]]:
                issues.append(
                    Issue(
                        f"groups[{k}].device_ids",
                        "devices with training samples (the partition left this one empty)",
                        device_id,
                    )
                )
    return issues


@dataclasses.dataclass(slots=True)
class RunContext:
    """Everything a run holds in memory: the one model, the tokenized rows, the forward source.

    ``eval_rows`` (the fixed evaluation subset) are ordered by token count, shortest first, so that
    evaluation batches drop little but padding (``runtime.padding``).
    """

    model: AdaptedModel
    data: TokenizedData
    device_rows: dict[str, torch.Tensor]
    eval_rows: torch.Tensor
    forward_source: Any
    model_sha256: str
    fleet_sha256: str
    plain_forward: Forward | None = None

    def forward_for(self, depth: int, layers: Sequence[int] | None = None) -> Forward:
        """The model at ``depth`` (LoRA on ``layers`` when given) and a forward over the run's rows.

        With ``layers``, ``depth`` is ``num_layers - min(layers)`` (checked with the plan), so the
        cache's boundary is the lowest trained layer. At full depth (boundary 0) the frozen prefix
        is only the embeddings: caching them would save a lookup and cost a hidden state per row,
        so the plain forward runs instead.
        """
        if layers is None:
            self.model.set_depth(depth)
        else:
            self.model.set_layers(layers)
        if isinstance(self.forward_source, PrefixCache):
            if depth == self.model.num_layers:  # boundary 0: the prefix is the embeddings, nothing to save
                return self._plain_forward()
            return self.forward_source.forward_for(depth)
        return self.forward_source  # type: ignore[no-any-return]

    def for_rule(self, aggregation: str) -> RunContext:
        """This context, or a copy without the frozen-prefix cache when ``aggregation`` changes the base.

        FedEx-LoRA and FLoRA write base deltas into the frozen layers, so states cached from the
        pristine base would be stale below a group's depth. A context prepared for another rule (shared
        by an experiment's runs, or a test's) holds such a cache; the copy shares the model and rows and
        runs the plain forward, which is what :func:`prepare_run` builds for these rules.
        """
        if not get_rule(aggregation).changes_base or not isinstance(self.forward_source, PrefixCache):
            return self
        plain = PlainForward(self.model, self.data)
        return dataclasses.replace(self, forward_source=plain, plain_forward=plain)

    def _plain_forward(self) -> Forward:
        if self.plain_forward is None:
            self.plain_forward = PlainForward(self.model, self.data)
        return self.plain_forward


def prepare_run(
    plan: Plan, fleet: Fleet, options: RunOptions, *, device_ids: Sequence[str] | None = None
) -> RunContext:
    """Load data and model, tokenize the rows the run touches, check the plan against both.

    ``device_ids`` names the devices whose training rows this process needs (default: every
    device of the plan); ``()`` loads only the evaluation rows, for a driver whose executor
    trains elsewhere. A Ray actor passes the devices it owns.

    Raises
    ------
    InvalidInputError
        A plan naming unknown devices, depths beyond the model, devices without data; a fleet
        without a data set; a data file that changed since the fleet was made.
    """
    spec = ModelSpec(
        path=options.model,
        num_labels=len(fleet.class_names),
        lora_rank=options.lora_rank,
        lora_alpha=options.lora_alpha,
        max_seq_len=options.max_seq_len,
    )
    model, tokenizer = load_adapted_model(spec, seed=options.seed)
    issues = check_plan_for_run(plan, fleet, model.num_layers, options.lora_rank)
    if issues:
        raise InvalidInputError(issues, "plan")
    assert fleet.dataset is not None  # checked above
    texts = read_dataset(fleet.dataset)
    positions = {device.device_id: idx for idx, device in enumerate(fleet.devices)}
    wanted = plan.device_ids if device_ids is None else tuple(device_ids)
    unknown = [d for d in wanted if d not in positions]
    if unknown:
        raise InvalidInputError([Issue("device_ids", "ids of devices in the fleet", d) for d in unknown], "run")
    used = {device_id: fleet.sample_indices[positions[device_id]] for device_id in wanted}
    rng = np.random.default_rng(derive_seed(options.seed, 7))
    test = np.array(fleet.dataset.test_indices, dtype=np.int64)
    eval_source = np.sort(rng.choice(test, size=min(options.eval_samples, len(test)), replace=False))
    rows = sorted({row for indices in used.values() for row in indices} | set(eval_source.tolist()))
    row_position = {row: pos for pos, row in enumerate(rows)}
    data = tokenize_texts(
        [texts.texts[r] for r in rows], [texts.labels[r] for r in rows], tokenizer, options.max_seq_len
    )
    device_rows = {d: torch.tensor([row_position[r] for r in rows_of], dtype=torch.long) for d, rows_of in used.items()}
    eval_rows = torch.tensor([row_position[int(r)] for r in eval_source], dtype=torch.long)
    # shortest first: an evaluation batch then holds rows of similar length and drops their common padding
    eval_rows = eval_rows[torch.argsort(data.attention_mask[eval_rows].sum(dim=1), stable=True)]
    source: Any = (
        PrefixCache(model, data, max_bytes=options.prefix_cache_max_mib * 2**20)
        if options.use_prefix_cache and not get_rule(options.aggregation).changes_base  # base deltas: stale cache
        else PlainForward(model, data)
    )
    model_dir = resolve_model_dir(options.model)
    release_freed_memory()  # the texts and tokenizer batches just freed (runtime.memory)
    return RunContext(
        model=model,
        data=data,
        device_rows=device_rows,
        eval_rows=eval_rows,
        forward_source=source,
        model_sha256=model_sha256(model_dir),
        fleet_sha256=sha256_of(fleet),
    )
