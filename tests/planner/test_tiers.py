"""Device tiers are cited data; draws stay in their ranges, follow the mix and are fixed by the generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.fleets.tiers import (
    NETWORKS,
    PRESETS,
    TIERS,
    DeviceTier,
    assign_tiers,
    draw_device,
    resolve_tier_mix,
)


def _geometric_mean(pair: tuple[float, float]) -> float:
    return math.sqrt(pair[0] * pair[1])


def test_every_tier_and_link_cites_its_sources_and_every_preset_names_real_tiers():
    """Each tier and link class lists sources; presets use known tiers with shares summing to one."""
    # Assert
    assert all(tier.sources and tier.name == name for name, tier in TIERS.items())
    assert all(link.sources and link.name == name for name, link in NETWORKS.items())
    assert set(NETWORKS) == {"4g", "5g", "wifi"}
    for mix in PRESETS.values():
        assert set(mix) <= set(TIERS)
        assert math.isclose(sum(mix.values()), 1.0)


def test_tiers_rank_as_the_hardware_does():
    """AGX Orin is faster than Xavier NX and TX2, which are faster than phones; links rank wifi/5g above 4g."""
    # Arrange
    speed = {name: _geometric_mean(tier.compute_scale) for name, tier in TIERS.items()}
    # Assert
    assert speed["jetson-agx-orin"] < speed["jetson-xavier-nx"] < speed["jetson-tx2"] < speed["phone-flagship"]
    assert speed["phone-flagship"] < speed["phone-midrange"]
    assert TIERS["jetson-agx-orin"].memory_bytes[0] > TIERS["jetson-tx2"].memory_bytes[1]
    assert _geometric_mean(NETWORKS["4g"].downlink_mbps) < _geometric_mean(NETWORKS["5g"].downlink_mbps)
    assert 15 < _geometric_mean(NETWORKS["5g"].uplink_mbps) < 30  # Ookla 2021: 21.08 Mbps median


@given(st.sampled_from(sorted(TIERS)), st.sampled_from([None, "4g", "5g", "wifi"]), st.integers(0, 2**32))
def test_draws_stay_within_the_tier_and_link_ranges(name, network, seed):
    """Every quantity falls inside its range; the link is the override's when one is given."""
    # Arrange
    tier = TIERS[name]
    link = NETWORKS[network or tier.network]
    # Act
    draw = draw_device(tier, np.random.default_rng(seed), network=network)
    # Assert
    assert tier.compute_scale[0] <= draw.compute_scale <= tier.compute_scale[1]
    assert tier.memory_bytes[0] - 2**20 <= draw.memory_bytes <= tier.memory_bytes[1]
    assert draw.memory_bytes % 2**20 == 0
    assert link.uplink_mbps[0] <= draw.uplink_mbps <= link.uplink_mbps[1]
    assert link.downlink_mbps[0] <= draw.downlink_mbps <= link.downlink_mbps[1]


def test_uplink_and_downlink_share_one_draw():
    """A device at the top of the downlink range is at the top of the uplink range too."""
    # Arrange
    link = NETWORKS["wifi"]
    # Act
    draws = [draw_device(TIERS["laptop"], np.random.default_rng(seed)) for seed in range(50)]
    # Assert
    quantiles = [
        (
            math.log(d.uplink_mbps / link.uplink_mbps[0]) / math.log(link.uplink_mbps[1] / link.uplink_mbps[0]),
            math.log(d.downlink_mbps / link.downlink_mbps[0]) / math.log(link.downlink_mbps[1] / link.downlink_mbps[0]),
        )
        for d in draws
    ]
    assert all(math.isclose(up, down, abs_tol=1e-9) for up, down in quantiles)


def test_the_same_generator_state_draws_the_same_device():
    """Two generators with one seed draw equal devices; unpacking gives the four quantities."""
    # Act
    first = draw_device(TIERS["phone-midrange"], np.random.default_rng(7))
    scale, memory, up, down = draw_device(TIERS["phone-midrange"], np.random.default_rng(7))
    # Assert
    assert first == (scale, memory, up, down)


def test_an_unknown_network_suggests_the_close_name():
    """'wfi' is refused with a did-you-mean for 'wifi'."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        draw_device(TIERS["laptop"], np.random.default_rng(0), network="wfi")
    # Assert
    assert (info.value.issues[0].path, info.value.issues[0].hint) == ("network", "did you mean 'wifi'?")


def test_a_mix_is_normalised_and_every_bad_entry_reported():
    """Weights become shares; an unknown tier and a NaN weight are two issues."""
    # Act
    shares = resolve_tier_mix({"laptop": 1, "phone-flagship": 3})
    with pytest.raises(InvalidInputError) as info:
        resolve_tier_mix({"jetson-tx": 1.0, "laptop": math.nan})
    # Assert
    assert shares == {"laptop": 0.25, "phone-flagship": 0.75}
    assert [i.path for i in info.value.issues] == ["tier_mix.jetson-tx", "tier_mix.laptop"]
    assert info.value.issues[0].hint == "did you mean 'jetson-tx2'?"


def test_an_unknown_preset_is_refused():
    """'paperr' names the presets and suggests 'paper'."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        resolve_tier_mix("paperr")
    # Assert
    assert info.value.issues[0].hint == "did you mean 'paper'?"


def test_tiers_are_apportioned_exactly_and_shuffled():
    """Ten devices of the paper mix are 4 TX2, 4 NX and 2 Orin, in a seeded order."""
    # Act
    tiers = assign_tiers(10, "paper", np.random.default_rng(0))
    again = assign_tiers(10, "paper", np.random.default_rng(0))
    # Assert
    assert sorted(tiers) == ["jetson-agx-orin"] * 2 + ["jetson-tx2"] * 4 + ["jetson-xavier-nx"] * 4
    assert tiers == again
    assert tiers != tuple(sorted(tiers))


def test_a_tier_with_a_reversed_range_and_an_unknown_network_is_refused():
    """A custom tier is checked like any input: both problems at once."""
    # Act
    with pytest.raises(InvalidInputError) as info:
        DeviceTier(name="x", description="", compute_scale=(2.0, 1.0), memory_bytes=(1, 2), network="3g", sources=())
    # Assert
    assert [i.path for i in info.value.issues] == ["compute_scale", "network"]
