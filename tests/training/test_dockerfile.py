"""The training image's Dockerfile, linted with hadolint (no Docker engine runs here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from setuptools import find_packages

from harness.data import REPO_ROOT
from harness.tools import hadolint

DOCKERFILE = REPO_ROOT / "training" / "Dockerfile"


def test_training_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


def test_image_installs_only_the_training_extra_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert "FROM tensorflow/tensorflow:2.21.0-gpu" in text
    assert 'pip install --no-cache-dir ".[training]"' in text
    assert "USER 10001" in text
    assert 'ENTRYPOINT ["python", "-m", "training"]' in text


def test_image_copies_every_package_the_wheel_holds() -> None:
    """pip builds the project's wheel inside the image: a package left out of the COPY lines
    is missing from the image (core, client and deploy once were)."""
    found = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"
    ]
    folders = {
        str((REPO_ROOT / where / package).relative_to(REPO_ROOT))
        for where in found["where"]
        for package in find_packages(str(REPO_ROOT / where), include=found["include"])
        if "." not in package
    }
    copied = set(re.findall(r"^COPY (\S+) \./\1$", DOCKERFILE.read_text(), re.MULTILINE))
    assert folders - copied == set()
