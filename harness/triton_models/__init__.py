"""A faulty python-backend model for the canary tests (faulty.py): packaged as a version's
model.py, it wraps the genuine one (renamed genuine.py) and reads its fault from fault.json."""

from __future__ import annotations

import json
from pathlib import Path

FAULTY_MODEL = Path(__file__).with_name("faulty.py")


def make_faulty(version_dir: Path, fault: str) -> None:
    """Turn a packaged python-flavour version into the faulty model with `fault`."""
    (version_dir / "model.py").rename(version_dir / "genuine.py")
    (version_dir / "model.py").write_bytes(FAULTY_MODEL.read_bytes())
    (version_dir / "fault.json").write_text(json.dumps({"fault": fault}))
