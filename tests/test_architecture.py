"""The dependency arrows hold: planner <- models <- runtime <- validation <- cli."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> packages it must never import
FORBIDDEN = {
    "planner": (
        "torch",
        "transformers",
        "peft",
        "flwr",
        "ray",
        "hierfedlora.runtime",
        "hierfedlora.models",
        "hierfedlora.validation",
        "hierfedlora.cli",
        "hierfedlora.commands",
    ),
    "models": ("hierfedlora.runtime", "hierfedlora.validation", "hierfedlora.cli", "cvxpy", "ortools"),
    "runtime": (
        "hierfedlora.validation",
        "hierfedlora.cli",
        "cvxpy",
        "ortools",
        "highspy",
        "hierfedlora.planner.grouping",
        "hierfedlora.planner.assignment",
        "hierfedlora.planner.plan",
    ),
    "validation": ("hierfedlora.cli", "hierfedlora.commands"),
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_import_points_the_wrong_way():
    """An AST walk over every module finds no import against the arrows."""
    violations = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _imports(path):
                if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                    violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert violations == []


def test_importing_the_planner_pulls_no_torch():
    """A fresh interpreter importing hierfedlora.planner (and its solvers) never loads torch or flwr."""
    code = (
        "import sys, importlib, pkgutil, hierfedlora.planner as p\n"
        "for m in pkgutil.walk_packages(p.__path__, 'hierfedlora.planner.'): importlib.import_module(m.name)\n"
        "bad = [m for m in ('torch', 'flwr', 'transformers', 'peft') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_building_the_command_line_pulls_no_torch_or_solver():
    """A fresh interpreter builds every subcommand's parser (what ``--help`` and every command do first) without
    loading torch, transformers, a solver or matplotlib: those load in the handler that needs them."""
    code = (
        "import sys\n"
        "from hierfedlora.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('torch', 'transformers', 'peft', 'cvxpy', 'ortools', 'matplotlib', 'flwr', 'ray')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_a_refused_run_pulls_no_torch(tmp_path):
    """`hierfedlora run` with a bad option exits 2 with its error before loading torch or the model stack:
    the options, the run folder's checks and the checkpoint's names are torch-free until tensors are read."""
    code = (
        "import sys\n"
        "from hierfedlora.cli import main\n"
        f"rc = main(['run', 'plan.json', '--fleet', 'fleet.json', '--cost-model', 'cost.json', '--rounds', '0',"
        f" '--out', {str(tmp_path / 'run')!r}])\n"
        "heavy = ('torch', 'transformers', 'peft', 'flwr', 'ray')\n"
        "print(rc, ','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.split() == ["2"], result.stdout + result.stderr[-2000:]
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_every_package_folder_is_installed():
    """pyproject.toml lists every folder holding an ``__init__.py``, so a wheel ships each subpackage."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {"hierfedlora"}
    for init in ROOT.rglob("__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if parts and parts[0] not in ("tests", "docs", "scripts", "runs") and not any(p.startswith(".") for p in parts):
            found.add(".".join(("hierfedlora", *parts)))
    assert found - listed == set()
