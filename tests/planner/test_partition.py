"""Partitions are disjoint, use only training rows, follow their method and are fixed by the seed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleets.datasets import train_test_split
from hierfedlora.planner.fleets.partition import PARTITION_RULES, PartitionSpec, partition_indices

LABELS = np.repeat(np.arange(5), 40)  # 200 rows, 5 balanced classes
TRAIN, TEST = train_test_split(LABELS, 0.2, seed=0)


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...], PartitionSpec, int]:
    labels = np.asarray(draw(st.lists(st.integers(0, 3), min_size=20, max_size=150)))
    train, test = train_test_split(labels, draw(st.sampled_from([0.0, 0.2])), seed=draw(st.integers(0, 99)))
    spec = PartitionSpec(
        method=draw(st.sampled_from(["iid", "dirichlet", "classes"])),
        num_devices=draw(st.integers(1, 6)),
        alpha=draw(st.sampled_from([0.1, 0.5, 5.0])),
        classes_per_device=draw(st.integers(1, 2)),
        max_samples_per_device=draw(st.none() | st.integers(1, 30)),
    )
    return labels, train, test, spec, draw(st.integers(0, 2**31))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_partitions_are_disjoint_training_rows_and_seed_determined(case):
    """Whatever the method, devices hold disjoint non-empty sets of training rows, never a test row,
    and the same seed gives the same partition; an impossible one is an InvalidInputError naming it."""
    # Arrange
    labels, train, test, spec, seed = case
    # Act
    try:
        parts = partition_indices(labels, train, spec, seed=seed)
    except InvalidInputError as err:
        # Assert (a partition the data cannot give is refused, with the partitioner named)
        assert err.issues[0].path in ("partition", "train_indices", "classes_per_device")
        return
    again = partition_indices(labels, train, spec, seed=seed)
    # Assert
    rows = [row for part in parts for row in part]
    assert len(parts) == spec.num_devices and all(len(part) >= 1 for part in parts)
    assert len(rows) == len(set(rows)) and set(rows) <= set(train) and not set(rows) & set(test)
    assert all(list(part) == sorted(part) for part in parts)
    assert again == parts
    if spec.max_samples_per_device is not None:
        assert max(len(part) for part in parts) <= spec.max_samples_per_device


def test_iid_gives_every_training_row_to_a_device_in_balanced_shares():
    """IID shards cover the training rows exactly, sizes differing by one at most, labels well mixed."""
    # Act
    parts = partition_indices(LABELS, TRAIN, PartitionSpec(method="iid", num_devices=7), seed=1)
    # Assert
    assert sorted(row for part in parts for row in part) == list(TRAIN)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(len(set(LABELS[list(part)])) >= 4 for part in parts)  # a shuffled order, not class blocks


def test_classes_gives_each_device_exactly_k_classes_and_uses_every_class():
    """k classes per device, the first one i mod C, so ten devices cover all five classes."""
    # Act
    parts = partition_indices(
        LABELS, TRAIN, PartitionSpec(method="classes", num_devices=10, classes_per_device=2), seed=3
    )
    # Assert
    classes = [set(LABELS[list(part)].tolist()) for part in parts]
    assert all(len(c) == 2 for c in classes)
    assert all(i % 5 in c for i, c in enumerate(classes))
    assert set().union(*classes) == set(range(5))


def test_smaller_alpha_gives_more_skewed_devices():
    """With alpha 0.05 devices hold fewer classes on average than with alpha 100."""

    # Arrange
    def mean_classes(alpha: float) -> float:
        parts = partition_indices(LABELS, TRAIN, PartitionSpec(method="dirichlet", num_devices=8, alpha=alpha), seed=2)
        return float(np.mean([len(set(LABELS[list(part)].tolist())) for part in parts]))

    # Act
    skewed, even = mean_classes(0.05), mean_classes(100.0)
    # Assert
    assert skewed < 3 < even


def test_max_samples_subsamples_each_device_deterministically():
    """Each device keeps at most the cap, a subset of what it had without it."""
    # Arrange
    full = partition_indices(LABELS, TRAIN, PartitionSpec(method="iid", num_devices=4), seed=9)
    # Act
    capped = partition_indices(
        LABELS, TRAIN, PartitionSpec(method="iid", num_devices=4, max_samples_per_device=10), seed=9
    )
    # Assert
    assert [len(part) for part in capped] == [10] * 4
    assert all(set(c) <= set(f) for c, f in zip(capped, full, strict=True))


def test_an_impossible_dirichlet_draw_names_the_partitioner_alpha_and_devices():
    """Thirty rows over ten devices with at least three each almost never comes out of Dirichlet(0.01)."""
    # Arrange
    spec = PartitionSpec(method="dirichlet", num_devices=10, alpha=0.01, min_samples_per_device=3)
    # Act
    with pytest.raises(InvalidInputError) as info:
        partition_indices(LABELS[:30], range(30), spec, seed=0)
    # Assert
    assert info.value.issues[0].path == "partition"
    assert "DirichletPartitioner (dirichlet(alpha=0.01), 10 devices)" in str(info.value)


def test_more_classes_per_device_than_classes_is_refused():
    """Asking six classes of five is refused before any partitioner runs, with the number present."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        partition_indices(LABELS, TRAIN, PartitionSpec(method="classes", num_devices=3, classes_per_device=6), seed=0)
    # Assert
    assert str(info.value) == "classes_per_device must be at most the classes among the training rows (5); got 6"


def test_a_class_too_small_for_its_devices_names_the_pathological_partitioner():
    """Twelve devices need class 0 (first class i mod 3) but only two rows of it are for training."""
    # Arrange
    labels = [0] * 2 + [1] * 40 + [2] * 40
    # Act
    with pytest.raises(InvalidInputError) as info:
        partition_indices(
            labels, range(82), PartitionSpec(method="classes", num_devices=12, classes_per_device=1), seed=0
        )
    # Assert
    assert info.value.issues[0].path == "partition"
    assert "PathologicalPartitioner (classes(k=1), 12 devices)" in str(info.value)


def test_too_few_rows_and_bad_inputs_are_reported_together():
    """More devices than rows and a negative seed are two issues, before any partitioner runs."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        partition_indices(LABELS, range(3), PartitionSpec(method="iid", num_devices=4), seed=-1)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["train_indices", "seed"]


@pytest.mark.parametrize(("field", "bad"), [(f, v) for f, r in PARTITION_RULES.items() for v in r.bad_values])
def test_spec_reports_each_broken_field(field, bad):
    """A bad value is reported under its field's path, whatever the value."""
    # Arrange
    valid = {"method": "iid", "num_devices": 2}
    # Act
    with pytest.raises(InvalidInputError) as info:
        PartitionSpec(**{**valid, field: bad})
    # Assert
    assert [issue.path for issue in info.value.issues] == [field]


def test_partitioning_loads_no_torch():
    """Flower Datasets' partitioners and HF datasets run without importing torch."""
    # Arrange
    code = (
        "import sys\n"
        "from hierfedlora.planner.fleets.partition import PartitionSpec, partition_indices\n"
        "partition_indices([0, 1] * 10, range(20), PartitionSpec(method='dirichlet', num_devices=2), seed=0)\n"
        "print('torch' in sys.modules)\n"
    )
    # Act
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Assert
    assert result.stdout.strip() == "False"


def test_a_dirichlet_draw_flower_gives_up_on_restarts_with_new_seeds_deterministically():
    """Six classes over 80 devices at alpha 0.1 leave a device empty in most draws: restarts find one that does not."""
    # Arrange
    labels = np.repeat(np.arange(6), 300)
    spec = PartitionSpec(method="dirichlet", num_devices=80, alpha=0.1, max_samples_per_device=48)
    # Act
    first = partition_indices(labels, range(labels.size), spec, seed=0)
    again = partition_indices(labels, range(labels.size), spec, seed=0)
    # Assert
    assert first == again
    assert min(len(part) for part in first) >= 1
    assert len(set().union(*map(set, first))) == sum(len(part) for part in first)
