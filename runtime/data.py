"""Samples tokenized once, devices as index sets, seeded batches and the held-out split.

A data set is tokenized once into a :class:`TokenizedData` (token ids, attention mask, labels; one row
per sample, padded or truncated to ``max_seq_len``). A device is a :class:`DeviceData`: its sample
indices into that table, never a copy of the tensors. :func:`device_batches` turns a device's indices
into batches of indices, shuffled each epoch by the caller's ``torch.Generator``, so a seed fixes the order.

Examples
--------
>>> import torch
>>> batches = device_batches(torch.tensor([10, 11, 12, 13, 14]), 2, torch.Generator().manual_seed(0))
>>> [len(b) for b in batches]  # one epoch; the last batch holds the remainder
[2, 2, 1]
>>> sorted(torch.cat(list(device_batches(torch.arange(5), 2, torch.Generator()))).tolist())
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator, Sequence
from typing import Any, TypeGuard

import torch

from hierfedlora.planner.errors import InvalidInputError, Issue, raise_if_any
from hierfedlora.planner.rules import POSITIVE_INT, optional
from hierfedlora.planner.types import DatasetSpec, Fleet

__all__ = [
    "DeviceData",
    "TokenizedData",
    "device_batches",
    "device_data",
    "devices_from_fleet",
    "test_split",
    "tokenize_texts",
]


def _is_int_tensor(value: object, dims: int) -> TypeGuard[torch.Tensor]:
    return (
        isinstance(value, torch.Tensor)
        and value.dim() == dims
        and not value.is_floating_point()
        and not value.is_complex()
        and value.dtype != torch.bool
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TokenizedData:
    """Every sample of a data set, tokenized: ``input_ids`` and ``attention_mask`` are
    ``[num_samples, seq_len]`` int64, ``labels`` is ``[num_samples]`` int64 (class positions)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if not _is_int_tensor(self.input_ids, 2) or self.input_ids.shape[0] == 0:
            expected = "a 2-D integer tensor [num_samples >= 1, seq_len]"
            raise InvalidInputError([Issue("input_ids", expected, _shape(self.input_ids))])
        issues = []
        if not (_is_int_tensor(self.attention_mask, 2) and self.attention_mask.shape == self.input_ids.shape):
            expected = f"an integer tensor shaped like input_ids {tuple(self.input_ids.shape)}"
            issues.append(Issue("attention_mask", expected, _shape(self.attention_mask)))
        if not (_is_int_tensor(self.labels, 1) and self.labels.shape[0] == self.input_ids.shape[0]):
            expected = f"a 1-D integer tensor, one label per sample ({self.input_ids.shape[0]})"
            issues.append(Issue("labels", expected, _shape(self.labels)))
        raise_if_any(issues)

    @property
    def num_samples(self) -> int:
        """Rows in the table."""
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens per row (padded or truncated)."""
        return int(self.input_ids.shape[1])

    def subset(self, indices: torch.Tensor) -> TokenizedData:
        """The rows ``indices`` (checked to be in range), as a new table."""
        raise_if_any(_index_issues("indices", indices, self.num_samples))
        return TokenizedData(
            input_ids=self.input_ids[indices], attention_mask=self.attention_mask[indices], labels=self.labels[indices]
        )


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _first_bad(values: Sequence[Any], accepts: Any, path: str, expected: str) -> list[Issue]:
    """One issue for the first refused entry, with how many others there are (80k rows, one line)."""
    bad = [idx for idx, value in enumerate(values) if not accepts(value)]
    if not bad:
        return []
    hint = f"{len(bad) - 1} more entries are refused too" if len(bad) > 1 else ""
    return [Issue(f"{path}[{bad[0]}]", expected, values[bad[0]], hint)]


def _is_label(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0


def tokenize_texts(
    texts: Sequence[str], labels: Sequence[int], tokenizer: Any, max_seq_len: int, *, chunk_size: int = 8192
) -> TokenizedData:
    """Tokenize every text once, padded and truncated to ``max_seq_len`` tokens.

    Parameters
    ----------
    texts : sequence of str
        One text per sample.
    labels : sequence of int
        One class position (>= 0) per sample.
    tokenizer : transformers tokenizer
        Called on ``chunk_size`` texts at a time (fast tokenizers batch natively); needs a pad token.
    max_seq_len : int
        Tokens per row, at most the tokenizer's ``model_max_length``.

    Raises
    ------
    InvalidInputError
        No texts, a count of labels that differs, a text that is not a string, a label that is not an
        integer >= 0, a bad ``max_seq_len``, or a tokenizer without a pad token. All at once.
    """
    issues = []
    if len(texts) == 0:
        issues.append(Issue("texts", "a non-empty list of strings", []))
    if len(labels) != len(texts):
        issues.append(Issue("labels", f"one label per text ({len(texts)})", f"{len(labels)} labels"))
    issues += _first_bad(texts, lambda t: isinstance(t, str), "texts", "a string")
    issues += _first_bad(labels, _is_label, "labels", "an integer >= 0 (a class position)")
    limit = getattr(tokenizer, "model_max_length", None)
    if not POSITIVE_INT.accepts(max_seq_len):
        issues.append(Issue("max_seq_len", POSITIVE_INT.expected, max_seq_len))
    elif isinstance(limit, int) and max_seq_len > limit:
        issues.append(Issue("max_seq_len", f"at most the tokenizer's model_max_length ({limit})", max_seq_len))
    if getattr(tokenizer, "pad_token", None) is None:
        hint = "set tokenizer.pad_token (e.g. to its eos_token) for a causal LM"
        issues.append(Issue("tokenizer", "a tokenizer with a pad token", type(tokenizer).__name__, hint))
    if not POSITIVE_INT.accepts(chunk_size):
        issues.append(Issue("chunk_size", POSITIVE_INT.expected, chunk_size))
    raise_if_any(issues)
    ids, masks = [], []
    for start in range(0, len(texts), chunk_size):
        encoded = tokenizer(
            list(texts[start : start + chunk_size]),
            padding="max_length",
            truncation=True,
            max_length=max_seq_len,
            return_tensors="pt",
        )
        ids.append(encoded["input_ids"].to(torch.int64))
        masks.append(encoded["attention_mask"].to(torch.int64))
    label_tensor = torch.tensor([int(v) for v in labels], dtype=torch.int64)
    return TokenizedData(input_ids=torch.cat(ids), attention_mask=torch.cat(masks), labels=label_tensor)


def _index_issues(path: str, indices: object, num_samples: int) -> list[Issue]:
    """Indices must be a non-empty 1-D integer tensor of distinct positions in ``[0, num_samples)``."""
    if not _is_int_tensor(indices, 1) or indices.numel() == 0:
        return [Issue(path, "a non-empty 1-D integer tensor of sample indices", _shape(indices))]
    assert isinstance(indices, torch.Tensor)
    outside = indices[(indices < 0) | (indices >= num_samples)]
    if outside.numel():
        return [Issue(path, f"indices in [0, {num_samples})", f"{outside.numel()} outside, e.g. {int(outside[0])}")]
    distinct = torch.unique(indices).numel()
    if distinct != indices.numel():
        return [Issue(path, "distinct indices", f"{indices.numel() - distinct} repeated")]
    return []


def _as_indices(indices: torch.Tensor | Sequence[int]) -> object:
    if isinstance(indices, torch.Tensor):
        return indices
    try:
        return torch.as_tensor(list(indices))  # floats stay floats and are refused, never truncated
    except (TypeError, ValueError, RuntimeError):
        return indices


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DeviceData:
    """A device's data: the positions of its samples in the run's :class:`TokenizedData`."""

    device_id: str
    indices: torch.Tensor

    @property
    def num_samples(self) -> int:
        """Samples the device holds."""
        return int(self.indices.numel())


def device_data(data: TokenizedData, device_id: str, indices: torch.Tensor | Sequence[int]) -> DeviceData:
    """A checked :class:`DeviceData`.

    Raises
    ------
    InvalidInputError
        If the device has no samples, or an index is repeated or outside ``data``.
    """
    tensor = _as_indices(indices)
    raise_if_any([issue.with_prefix(device_id) for issue in _index_issues("indices", tensor, data.num_samples)])
    assert isinstance(tensor, torch.Tensor)
    return DeviceData(device_id=device_id, indices=tensor.to(torch.int64))


def devices_from_fleet(fleet: Fleet, data: TokenizedData) -> tuple[DeviceData, ...]:
    """Every device of ``fleet`` as its sample indices, checked against ``data`` and the held-out split.

    Raises
    ------
    InvalidInputError
        If the fleet has no sample indices, its data set's size differs from ``data``'s, or a device has
        no samples, an index outside ``data`` or repeated, a held-out sample, or label counts that
        differ from its samples' labels, or a sample is on two devices. All at once, with paths.
    """
    if not fleet.sample_indices:
        raise InvalidInputError([Issue("sample_indices", "one list of indices per device (a partitioned fleet)", ())])
    issues = []
    if fleet.dataset is not None and fleet.dataset.num_samples != data.num_samples:
        expected = f"the number of rows tokenized ({data.num_samples})"
        issues.append(Issue("dataset.num_samples", expected, fleet.dataset.num_samples))
    held_out = torch.tensor(fleet.dataset.test_indices if fleet.dataset else (), dtype=torch.int64)
    devices = []
    for idx, (device, indices) in enumerate(zip(fleet.devices, fleet.sample_indices, strict=True)):
        path = f"sample_indices[{idx}]"
        tensor = _as_indices(indices)
        found = _index_issues(path, tensor, data.num_samples)
        issues += found
        if found or not isinstance(tensor, torch.Tensor):
            continue
        leaked = tensor[torch.isin(tensor, held_out)]
        if leaked.numel():
            issues.append(Issue(path, "no held-out (test) sample", f"{leaked.numel()} held out, e.g. {int(leaked[0])}"))
        counts = tuple(torch.bincount(data.labels[tensor], minlength=len(device.label_counts)).tolist())
        if counts != device.label_counts:
            issues.append(
                Issue(f"devices[{idx}].label_counts", f"the labels of its samples {counts}", device.label_counts)
            )
        devices.append(DeviceData(device_id=device.device_id, indices=tensor))
    if devices:
        values, counts = torch.unique(torch.cat([d.indices for d in devices]), return_counts=True)
        shared = values[counts > 1]
        if shared.numel():
            got = f"{shared.numel()} on several devices, e.g. {int(shared[0])}"
            issues.append(Issue("sample_indices", "each sample on one device at most", got))
    raise_if_any(issues)
    return tuple(devices)


def device_batches(
    indices: torch.Tensor | Sequence[int],
    batch_size: int,
    generator: torch.Generator,
    *,
    num_batches: int | None = None,
) -> Iterator[torch.Tensor]:
    """Batches of sample indices, in an order reshuffled each epoch by ``generator``.

    With ``num_batches=None`` one epoch: every index exactly once, in batches of ``batch_size`` (the last
    holds the remainder). Otherwise exactly ``num_batches`` batches, epoch after epoch, each epoch a new
    permutation. The same generator state gives the same batches; the generator advances by one
    ``torch.randperm`` per epoch started. Arguments are checked at the call, not at the first batch.

    Raises
    ------
    InvalidInputError
        If ``indices`` is empty or not integers, ``batch_size`` is not an integer >= 1, ``num_batches`` is
        neither ``None`` nor an integer >= 1, or ``generator`` is not a ``torch.Generator``.
    """
    tensor = _as_indices(indices)
    issues = []
    if not _is_int_tensor(tensor, 1) or tensor.numel() == 0:
        issues.append(Issue("indices", "a non-empty list of sample indices (a device with samples)", _shape(tensor)))
    if not POSITIVE_INT.accepts(batch_size):
        issues.append(Issue("batch_size", POSITIVE_INT.expected, batch_size))
    if not optional(POSITIVE_INT).accepts(num_batches):
        issues.append(Issue("num_batches", optional(POSITIVE_INT).expected, num_batches))
    if not isinstance(generator, torch.Generator):
        issues.append(Issue("generator", "a torch.Generator (seeded by the caller)", type(generator).__name__))
    raise_if_any(issues)
    assert isinstance(tensor, torch.Tensor)
    return _batches(tensor, batch_size, generator, num_batches)


def _batches(
    indices: torch.Tensor, batch_size: int, generator: torch.Generator, num_batches: int | None
) -> Iterator[torch.Tensor]:
    produced = 0
    while True:
        order = indices[torch.randperm(indices.numel(), generator=generator)]
        for start in range(0, order.numel(), batch_size):
            if produced == num_batches:
                return
            yield order[start : start + batch_size]
            produced += 1
        if num_batches is None or produced == num_batches:  # no permutation is drawn for an unused epoch
            return


def test_split(data: TokenizedData, dataset: DatasetSpec) -> TokenizedData:
    """The held-out evaluation rows ``dataset.test_indices`` of ``data``.

    Raises
    ------
    InvalidInputError
        If the split is empty, an index is repeated or outside ``data``, or ``dataset.num_samples``
        differs from the rows tokenized.
    """
    issues = []
    if dataset.num_samples != data.num_samples:
        expected = f"the number of rows tokenized ({data.num_samples})"
        issues.append(Issue("dataset.num_samples", expected, dataset.num_samples))
    indices = torch.tensor(dataset.test_indices, dtype=torch.int64)
    if indices.numel() == 0:
        hint = "a fleet made by the partitioner holds one; hand-written fleets need test_indices"
        issues.append(Issue("dataset.test_indices", "a non-empty held-out split", (), hint))
    else:
        issues += _index_issues("dataset.test_indices", indices, data.num_samples)
    raise_if_any(issues)
    return data.subset(indices)


test_split.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, whatever its name
