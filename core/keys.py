"""Secrets this project makes for itself (Triton's admin key, Airflow's JWT signing key): random,
made once, kept in a file only its owner can read."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def secret_file(path: Path, size: int = 32) -> str:
    """The secret in `path`, made the first time (`size` random bytes, URL-safe), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_urlsafe(size))
    return path.read_text().strip()
