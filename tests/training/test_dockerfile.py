"""The training images' Dockerfiles, linted with hadolint (no Docker engine runs here); the CPU
image is built and run for real in tests/cluster/test_images.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from harness.data import REPO_ROOT
from harness.tools import hadolint

DOCKERFILE = REPO_ROOT / "training" / "Dockerfile"
CPU_DOCKERFILE = REPO_ROOT / "training" / "Dockerfile.cpu"


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, CPU_DOCKERFILE], ids=["gpu", "cpu"])
def test_training_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_image_leaves_the_wheelhouse_in_its_build_stage() -> None:
    """The final stage copies the virtualenv alone: no layer of the image carries the wheels."""
    final_stage = CPU_DOCKERFILE.read_text().rpartition("\nFROM ")[2]
    assert "COPY --from=install /opt/training /opt/training" in final_stage
    assert "wheelhouse" not in final_stage


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
