"""The columnar fleet file (.npz): exact round trips, typed errors, no pickles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleet import load_fleet, save_fleet
from hierfedlora.planner.types import DatasetSpec, DeviceProfile, Fleet


def _device(idx: int, **fields: object) -> DeviceProfile:
    values: dict[str, object] = {
        "device_id": f"dev-{idx}", "label_counts": (idx, 3, 70_000 if idx == 2 else 1), "compute_scale": 1.5 + idx,
        "memory_bytes": 2**33 + idx, "uplink_mbps": 0.1 + idx / 3, "downlink_mbps": 200.0,
    }  # fmt: skip
    return DeviceProfile(**{**values, **fields})  # type: ignore[arg-type]


@pytest.fixture
def fleet() -> Fleet:
    """Every optional field in use: tiers and nulls, windows (none, empty-free null, several), data and indices."""
    devices = (
        _device(0, tier="jetson", availability=((0.0, 10.5), (20.0, 30.0))),
        _device(1),
        _device(2, tier="phone", availability=((5.0, 6.0),)),
    )
    spec = DatasetSpec(kind="csv", path="rows.csv", num_samples=80_000, test_indices=(79_999,))
    indices = tuple(tuple(range(start, start + d.num_samples)) for start, d in zip((0, 100, 200), devices, strict=True))
    return Fleet(devices=devices, class_names=("a", "b", "c"), dataset=spec, sample_indices=indices,
                 partition="dirichlet", seed=4)  # fmt: skip


def test_a_fleet_round_trips_through_npz(tmp_path, fleet):
    """save_fleet(.npz) then load_fleet gives an equal fleet (every field, nulls kept apart from values)."""
    # Arrange
    path = tmp_path / "fleet.npz"
    # Act
    save_fleet(path, fleet)
    loaded = load_fleet(path)
    # Assert
    assert loaded == fleet
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.npz"]


def test_a_fleet_without_data_or_windows_round_trips(tmp_path, fleet):
    """No data set, no sample indices, no windows: still equal after the round trip."""
    # Arrange
    bare = dataclasses.replace(fleet, devices=(_device(5), _device(6)), dataset=None, sample_indices=())
    # Act
    save_fleet(tmp_path / "bare.npz", bare)
    # Assert
    assert load_fleet(tmp_path / "bare.npz") == bare


def test_a_broken_column_is_reported_with_its_device_path(tmp_path, fleet):
    """A negative link rate written into the arrays is an issue naming devices[1].uplink_mbps and the file."""
    # Arrange
    path = tmp_path / "fleet.npz"
    save_fleet(path, fleet)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["uplink_mbps"][1] = -1.0
    np.savez(path, **arrays)
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_fleet(path)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["devices[1].uplink_mbps"]
    assert "fleet.npz" in str(info.value)


def test_a_missing_array_or_a_pickle_is_refused(tmp_path, fleet):
    """A file without label_counts names the array; an object array (a pickle) is refused, never loaded."""
    # Arrange
    path = tmp_path / "fleet.npz"
    save_fleet(path, fleet)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "label_counts"}
    np.savez(tmp_path / "missing.npz", **arrays)
    np.savez(tmp_path / "pickled.npz", **{**arrays, "label_counts": np.array([object()], dtype=object)})
    # Act / Assert
    with pytest.raises(InvalidInputError, match="label_counts"):
        load_fleet(tmp_path / "missing.npz")
    with pytest.raises(InvalidInputError, match="pickle"):
        load_fleet(tmp_path / "pickled.npz")


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("availability", None, "availability must be an array of the fleet .npz format; got 'missing'"),
        ("device_id", lambda a: np.array("d0"), "device_id must be a 1-d array of strings; got 'a 0-d array of <U2'"),
        ("availability_offsets", lambda a: a.astype(float), "must be a 1-d array of integers; got 'a 1-d array of f"),
        ("tier", lambda a: a.astype(np.float32), "tier must be a 1-d array of integers"),
        ("tier", lambda a: np.full_like(a, -5), "tier must be indices into tier_names"),
        ("availability", lambda a: a.reshape(-1), "availability must be a 2-d array of numbers"),
        ("availability", lambda a: np.zeros((1, 3)), "availability must be a W x 2 matrix"),
        ("label_counts", lambda a: a.astype(str), "label_counts must be a 2-d array of integers"),
    ],
)
def test_an_array_of_the_wrong_kind_or_shape_is_named(tmp_path, fleet, name, damage, expected):
    """Found by fuzzing: a flat array dropped while its offsets stay (KeyError), a 0-d device_id (TypeError), float
    offsets (TypeError) and the like were tracebacks; each is now invalid input naming the array."""
    # Arrange
    path = tmp_path / "fleet.npz"
    save_fleet(path, fleet)
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    if damage is None:
        del arrays[name]
    else:
        arrays[name] = damage(arrays[name])
    np.savez(tmp_path / "damaged.npz", **arrays)
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_fleet(tmp_path / "damaged.npz")
    # Assert
    assert name in [issue.path for issue in info.value.issues]
    assert expected in str(info.value) and info.value.source == "damaged.npz"
