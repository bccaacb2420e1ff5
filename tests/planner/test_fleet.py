"""Fleets are made reproducibly, survive a JSON round trip, and bad fleet or trace files are reported in full."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleet import check_fleet, import_fedscale, load_fleet, make_fleet, save_fleet
from hierfedlora.planner.fleets.datasets import WORDNET_NOUN_PATH, LabelledTexts, read_csv, read_wordnet
from hierfedlora.planner.fleets.tiers import NETWORKS, TIERS


@pytest.fixture
def data(tmp_path: Path) -> LabelledTexts:
    """120 rows in four classes, read from a real CSV file (so the spec carries its digest)."""
    path = tmp_path / "toy.csv"
    rows = "".join(f"text number {i},{'abcd'[i % 4]}\n" for i in range(120))
    path.write_text("text,label\n" + rows)
    return read_csv(path)


@pytest.fixture
def fleet(data: LabelledTexts):
    return make_fleet(data, num_devices=6, partition="dirichlet", alpha=0.5, tier_mix="mixed", seed=3)


def _paths(err: InvalidInputError) -> list[str]:
    return [issue.path for issue in err.issues]


def test_make_fleet_counts_labels_from_its_partition(data, fleet):
    """Device ids run d0..d5; label counts are the labels of each device's rows; the split is recorded."""
    # Arrange
    labels = np.asarray(data.labels)
    # Assert
    assert [d.device_id for d in fleet.devices] == [f"d{i}" for i in range(6)]
    for device, rows in zip(fleet.devices, fleet.sample_indices, strict=True):
        assert device.label_counts == tuple(np.bincount(labels[list(rows)], minlength=4).tolist())
        assert device.tier in TIERS
    assert len(fleet.dataset.test_indices) == 12
    assert fleet.dataset.sha256 == data.spec.sha256 and fleet.dataset.kind == "csv"
    assert (fleet.partition, fleet.seed, fleet.class_names) == ("dirichlet(alpha=0.5)", 3, ("a", "b", "c", "d"))
    assert check_fleet(fleet) == []


def test_the_seed_fixes_the_whole_fleet(data, fleet):
    """The same seed gives an equal fleet; another seed a different one."""
    # Act
    again = make_fleet(data, num_devices=6, partition="dirichlet", alpha=0.5, tier_mix="mixed", seed=3)
    other = make_fleet(data, num_devices=6, partition="dirichlet", alpha=0.5, tier_mix="mixed", seed=4)
    # Assert
    assert again == fleet
    assert other.sample_indices != fleet.sample_indices and other.devices != fleet.devices


def test_a_network_override_puts_every_device_on_that_link(data):
    """With network='4g' every link lies in the 4G ranges; the cap bounds every device."""
    # Act
    fleet = make_fleet(data, num_devices=5, partition="iid", tier_mix="paper", network="4g", max_samples_per_device=7)
    # Assert
    low, high = NETWORKS["4g"].uplink_mbps
    assert all(low <= d.uplink_mbps <= high for d in fleet.devices)
    assert [d.num_samples for d in fleet.devices] == [7] * 5
    assert fleet.partition == "iid, max 7 samples per device"


def test_make_fleet_reports_every_bad_argument(data):
    """A bad alpha, an unknown tier preset and a test fraction of 1 are three issues."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        make_fleet(data, num_devices=4, partition="dirichlet", alpha=0.0, tier_mix="phone", test_fraction=1.0)
    # Assert
    assert _paths(info.value) == ["alpha", "tier_mix", "test_fraction"]


def test_a_fleet_round_trips_through_json(tmp_path, fleet):
    """save_fleet then load_fleet gives an equal fleet and leaves no temporary file."""
    # Arrange
    path = tmp_path / "out" / "fleet.json"
    # Act
    save_fleet(path, fleet)
    loaded = load_fleet(path)
    # Assert
    assert loaded == fleet
    assert [p.name for p in path.parent.iterdir()] == ["fleet.json"]


def _corrupt(tmp_path: Path, fleet, edit) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "fleet.json"
    save_fleet(path, fleet)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_bad_values_and_unknown_keys_are_all_reported_with_paths(tmp_path, fleet):
    """A zero uplink, a text compute scale and a misspelt key show as three issues naming the file."""

    # Arrange
    def edit(data: dict) -> None:
        data["devices"][3]["uplink_mbps"] = 0
        data["devices"][1]["compute_scale"] = "fast"
        data["devices"][0]["memory_byte"] = data["devices"][0].pop("memory_bytes")

    path = _corrupt(tmp_path, fleet, edit)
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_fleet(path)
    # Assert
    assert sorted(_paths(info.value)) == [
        "devices[0].memory_byte",
        "devices[0].memory_bytes",
        "devices[1].compute_scale",
        "devices[3].uplink_mbps",
    ]
    assert "fleet.json: devices[3].uplink_mbps must be a finite number > 0; got 0" in str(info.value)
    assert "did you mean 'memory_bytes'?" in str(info.value)


def test_a_truncated_file_is_invalid_json(tmp_path, fleet):
    """A file cut short is one issue at its last line, not a traceback."""
    # Arrange
    path = tmp_path / "fleet.json"
    save_fleet(path, fleet)
    path.write_text(path.read_text()[:200])
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_fleet(path)
    # Assert
    assert info.value.issues[0].expected == "valid JSON"
    assert str(info.value).startswith("fleet.json: line ")


def test_cross_checks_catch_what_no_field_can(tmp_path, fleet):
    """A repeated id, a short label count, a held-out row on a device and a row on two devices are each named."""
    # Arrange
    test_row = fleet.dataset.test_indices[0]

    def edit(data: dict) -> None:
        data["devices"][2]["device_id"] = "d0"
        data["devices"][4]["label_counts"] = data["devices"][4]["label_counts"][:3]
        data["sample_indices"][1][0] = test_row
        data["sample_indices"][5][0] = data["sample_indices"][3][0]

    path = _corrupt(tmp_path, fleet, edit)
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_fleet(path)
    # Assert
    assert _paths(info.value) == [
        "devices[2].device_id",
        "devices[4].label_counts",
        "sample_indices[1]",
        "sample_indices[5]",
    ]
    assert "'d0' is also devices[0]" in str(info.value)


def test_indices_must_match_label_counts_and_stay_in_the_data(tmp_path, fleet):
    """A missing row and an index past the data set's end are reported per device."""

    # Arrange
    def edit(data: dict) -> None:
        data["sample_indices"][0] = data["sample_indices"][0][1:]
        data["sample_indices"][2][0] = 10_000

    path = _corrupt(tmp_path, fleet, edit)
    # Act
    with pytest.raises(InvalidInputError) as info:
        load_fleet(path)
    # Assert
    assert _paths(info.value) == ["sample_indices[0]", "sample_indices[2]"]
    assert "got 10000" in str(info.value)


def test_save_refuses_an_inconsistent_fleet_and_writes_nothing(tmp_path, fleet):
    """A fleet whose label counts disagree with the class names is not written."""
    # Arrange
    broken = dataclasses.replace(fleet, class_names=("a", "b"))
    path = tmp_path / "fleet.json"
    # Act
    with pytest.raises(InvalidInputError):
        save_fleet(path, broken)
    # Assert
    assert not path.exists()


def test_fedscale_traces_convert_units(tmp_path, fleet):
    """20 ms/sample at 3x against 0.03 s/sample on the host is scale 2; 1000 kbit/s is 1.024 Mbps;
    windows repeat every finish_time up to the horizon; labels and memory stay the fleet's."""
    # Arrange
    capacity = tmp_path / "capacity.json"
    capacity.write_text(json.dumps({str(i): {"computation": 20.0, "communication": 1000.0} for i in range(8)}))
    behaviour = tmp_path / "behave.csv"
    behaviour.write_text("client_id,active,inactive,finish_time\n" + "".join(f"{i},10,40,100\n" for i in range(8)))
    # Act
    imported = import_fedscale(
        capacity, fleet, host_train_s_per_sample=0.03, behaviour_path=behaviour, repeat_until_s=250
    )
    # Assert
    device = imported.devices[0]
    assert device.compute_scale == pytest.approx(2.0)
    assert device.uplink_mbps == device.downlink_mbps == pytest.approx(1.024)
    assert device.availability == ((10.0, 40.0), (110.0, 140.0), (210.0, 240.0))
    assert device.tier.startswith("fedscale:")
    assert [d.label_counts for d in imported.devices] == [d.label_counts for d in fleet.devices]
    assert [d.memory_bytes for d in imported.devices] == [d.memory_bytes for d in fleet.devices]
    assert len({d.tier for d in imported.devices}) == 6
    save_fleet(tmp_path / "imported.json", imported)
    assert load_fleet(tmp_path / "imported.json") == imported


def test_bad_trace_entries_are_all_reported(tmp_path, fleet):
    """A zero rate, a missing computation and a text value in a CSV trace are three issues by line."""
    # Arrange
    path = tmp_path / "capacity.csv"
    path.write_text("client_id,computation,communication\n1,5,0\n2,,100\n3,fast,100\n4,5,100\n")
    # Act
    with pytest.raises(InvalidInputError) as info:
        import_fedscale(path, fleet, host_train_s_per_sample=0.01)
    # Assert
    assert _paths(info.value) == ["line 2.communication", "line 3.computation", "line 4.computation"]


def test_a_trace_with_fewer_clients_than_devices_is_refused(tmp_path, fleet):
    """Four clients cannot stand in for six devices."""
    # Arrange
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps({str(i): {"computation": 5, "communication": 100} for i in range(4)}))
    # Act
    with pytest.raises(InvalidInputError) as info:
        import_fedscale(path, fleet, host_train_s_per_sample=0.01)
    # Assert
    assert info.value.issues[0].got == "4 clients"


@pytest.mark.skipif(not Path(WORDNET_NOUN_PATH).exists(), reason="wordnet-base is not installed")
def test_the_default_demo_fleet_builds_from_wordnet(tmp_path):
    """Twenty paper-mix devices of 150 WordNet glosses each, every one passing the fleet checks."""
    # Act
    fleet = make_fleet(read_wordnet(), num_devices=20, partition="dirichlet", alpha=0.5, max_samples_per_device=150)
    save_fleet(tmp_path / "fleet.json", fleet)
    # Assert
    assert [d.num_samples for d in fleet.devices] == [150] * 20
    assert len(fleet.class_names) == 26 and len(fleet.dataset.test_indices) == 8212
    assert load_fleet(tmp_path / "fleet.json") == fleet
