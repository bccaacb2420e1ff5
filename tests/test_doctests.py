"""Every docstring example in the planner (and the other torch-free modules) runs and passes."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import hierfedlora.planner

PLANNER_MODULES = sorted(f"hierfedlora.planner.{m.name}" for m in pkgutil.iter_modules(hierfedlora.planner.__path__))


@pytest.mark.parametrize("module_name", PLANNER_MODULES)
def test_planner_docstring_examples_run(module_name):
    """doctest.testmod finds no failure in the module."""
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
