"""The layering of docs/architecture.md, enforced from the imports themselves.

import-linter reads every import (function-level ones too) of the packages named
in pyproject.toml and checks the one-way layers contract there.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from harness.data import REPO_ROOT

# The packages the contract covers, as pyproject.toml names them.
PACKAGES = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the packages found first under `root`."""
    binary = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(binary)], cwd=root, env=env, capture_output=True, text=True)


def test_every_package_imports_only_the_layers_below_it() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_lower_package_importing_a_higher_one_breaks_the_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)  # triton_image lives in packaging/
        assert spec is not None, package
        assert spec.origin is not None, package
        source = Path(spec.origin).parent
        assert source.is_relative_to(REPO_ROOT), source
        shutil.copytree(source, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    storage = tmp_path / "core" / "storage.py"
    storage.write_text(
        storage.read_text()
        + "\n\ndef _plan_type() -> type:\n    from pipeline.plan import RunPlan\n\n    return RunPlan\n"
    )
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "0 kept, 1 broken" in result.stdout
    assert "core.storage -> pipeline.plan" in result.stdout


def test_test_modules_share_helpers_only_through_conftest_fixtures_or_the_harness() -> None:
    offenders = []
    for path in (REPO_ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            offenders += [
                f"{path.relative_to(REPO_ROOT)}: {name}" for name in names if name.split(".")[0] == "tests"
            ]
    assert offenders == []
