"""Run options past their bounds are refused by name; a run whose loss turns NaN names the learning rate."""

from __future__ import annotations

import math

import pytest

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.runtime.engine import _refuse_divergence
from hierfedlora.runtime.options import RUN_OPTION_LIMITS, RunOptions

INTEGER_OPTIONS = {f for f in RUN_OPTION_LIMITS if isinstance(getattr(RunOptions(rounds=1), f), int)} | {"rounds"}


@pytest.mark.parametrize(("field", "limit"), RUN_OPTION_LIMITS.items())
def test_an_option_past_its_bound_is_refused_by_name(field, limit):
    """A 20-digit integer (a LoRA rank of that size reached torch: exit 70) or ten times a float bound is named."""
    # Arrange
    bad = 10**20 if field in INTEGER_OPTIONS else limit * 10.0
    # Act
    with pytest.raises(InvalidInputError) as info:
        RunOptions(**{"rounds": 1, field: bad})
    # Assert
    assert [issue.path for issue in info.value.issues] == [field]
    assert "at most" in info.value.issues[0].expected


def test_the_bounds_themselves_are_accepted():
    """Each bound is a legal value."""
    # Arrange
    at_bounds = {f: (int(v) if f in INTEGER_OPTIONS else v) for f, v in RUN_OPTION_LIMITS.items()}
    # Act
    options = RunOptions(**at_bounds)
    # Assert
    assert options.lora_rank == 2**16 and options.learning_rate == 10.0


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_a_non_finite_loss_names_the_learning_rate(loss):
    """A diverged round (the CLI run with --learning-rate 1e20 ended naming the report's 'loss') names the option."""
    # Arrange
    options = RunOptions(rounds=2, learning_rate=9.0)
    # Act
    with pytest.raises(InvalidInputError) as info:
        _refuse_divergence([0.5, loss, None], options, global_round=2)
    _refuse_divergence([0.5, None, 0.7], options, global_round=2)  # finite losses pass
    # Assert
    [issue] = info.value.issues
    assert (issue.path, issue.got) == ("learning_rate", 9.0)
    assert f"the loss became {loss} in global round 2" in issue.hint


def test_a_straggler_factor_past_its_bound_is_refused_by_name():
    """--straggler-factor 1e20 was taken (it would only overflow the clock); the bound is named."""
    # Arrange
    from hierfedlora.runtime.fault_options import FAULT_LIMITS, FaultOptions

    # Act
    with pytest.raises(InvalidInputError) as info:
        FaultOptions(straggler_frac=0.5, straggler_factor=1e20)
    # Assert
    assert [issue.path for issue in info.value.issues] == ["straggler_factor"]
    assert FaultOptions(straggler_factor=FAULT_LIMITS["straggler_factor"]).straggler_factor == 1e6
