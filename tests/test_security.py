"""Security checks on what the project ships: no credentials in the repository or the
images' build contexts, least privilege in the manifests, nothing exposed by default.

`pytest -m security` runs these; the manifest checks sit with the manifests
(tests/deploy/test_kubernetes.py) and the image's with the image
(tests/deploy/test_image.py), marked alike.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from harness.data import REPO_ROOT

pytestmark = pytest.mark.security

# What leaked credentials look like: private keys, cloud keys and tokens, service-account JSON.
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |DSA |)PRIVATE KEY-----"),
    "service-account key": re.compile(r'"private_key"\s*:\s*"-----BEGIN'),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[0-9A-Za-z]{36}\b"),
    "Slack token": re.compile(r"\bxox[abpr]-[0-9A-Za-z-]{10,}\b"),
    "password assignment": re.compile(r"(?i)\b(password|passwd|secret)\s*[:=]\s*['\"][^'\"\s]{8,}['\"]"),
}


def _tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if name != "tests/test_security.py"]


def find_secrets(text: str) -> list[str]:
    return [kind for kind, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def test_no_credentials_in_the_repository() -> None:
    found = {}
    for name in _tracked_files():
        path = REPO_ROOT / name
        if path.is_file() and path.stat().st_size < 5_000_000:
            kinds = find_secrets(path.read_text(errors="ignore"))
            if kinds:
                found[name] = kinds
    assert found == {}


@pytest.mark.parametrize(
    "leak",
    [
        "-----BEGIN RSA PRIVATE KEY-----",
        '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMII"}',
        "aws_key = AKIAIOSFODNN7EXAMPLE",
        "token: ghp_" + "a" * 36,
        'password = "hunter2hunter2"',
    ],
)
def test_the_scan_finds_what_it_looks_for(leak: str) -> None:
    assert find_secrets(leak)


def test_images_carry_no_credentials() -> None:
    """Both Dockerfiles copy code and models only; credentials come from Workload Identity."""
    for dockerfile in ("training/Dockerfile", "packaging/Dockerfile"):
        text = (REPO_ROOT / dockerfile).read_text()
        assert not find_secrets(text)
        assert not re.search(r"(?im)^\s*(ENV|ARG)\s+\S*(KEY|TOKEN|PASSWORD|SECRET|CREDENTIALS)", text)
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in text
