"""The shared fixtures build valid contract objects."""

from tests.factories import make_devices


def test_fixtures_build(cost_model, tiny_fleet):
    """The toy cost model and the fleets satisfy their own rules."""
    assert cost_model.num_layers == 6
    assert len(tiny_fleet) == 8
    assert len(make_devices(5, seed=1)) == 5
