"""Every command-line entry point reports a user's mistake the same way: one line on stderr,
`<prog>: error: <what>`, and exit code 2; a traceback is for bugs only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from core.cli import refused_settings, reports_errors
from core.errors import ProjectError
from core.settings import RunConfig
from harness.data import REPO_ROOT, write_images
from harness.serving import free_port


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DOGS_CATS_STATE_DIR": str(tmp_path / "state"),
        "DOGS_CATS_CLUSTER_DIR": str(tmp_path / "cluster"),  # nothing built, nothing running there
    }
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


# (entry point and arguments, the one line it prints); {tmp} is the test's folder.
MISTAKES = [
    (
        ["training", "stage", "--source", "{tmp}/missing", "--dataset-uri", "{tmp}/dataset"],
        "python -m training: error: source folder '{tmp}/missing' does not exist",
    ),
    (
        ["deploy", "serve", "--repository", "{tmp}/missing"],
        "python -m deploy: error: no model repository at {tmp}/missing",
    ),
    (
        ["deploy", "unpack-context", "{tmp}/missing.tar.gz", "{tmp}/context"],
        "python -m deploy: error: {tmp}/missing.tar.gz does not exist",
    ),
    (
        ["cluster", "platform", "--env-file", "{tmp}/platform.env"],
        "python -m cluster: error: the cluster is not running: make cluster",
    ),
    (
        ["client", "batch", "--input", "{tmp}/missing", "--output", "{tmp}/out"],
        "python -m client: error: no images found under {tmp}/missing",
    ),
    (
        ["client", "--url", "127.0.0.1:{port}", "predict", "{tmp}/images/cat/cat0.jpg"],
        "python -m client: error: cannot reach Triton at 127.0.0.1:{port}: ",
    ),
]


@pytest.mark.parametrize(
    ("argv", "expected"), MISTAKES, ids=lambda value: " ".join(value[:2]) if isinstance(value, list) else ""
)
def test_a_mistake_is_one_line_and_exit_code_2(tmp_path: Path, argv: list[str], expected: str) -> None:
    write_images(tmp_path / "images", per_class=1)
    port = str(free_port())  # nothing listens there: loopback only
    result = _run(tmp_path, *(word.format(tmp=tmp_path, port=port) for word in argv))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected.format(tmp=tmp_path, port=port)), lines[0]


def test_the_demo_refuses_a_conf_that_is_not_an_object(tmp_path: Path) -> None:
    result = _run(tmp_path, "pipeline.demo", "--bucket", str(tmp_path / "bucket"), "--conf", "[1]")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "python -m pipeline.demo: error: CONF must be a JSON object"
    )


def test_a_default_that_follows_a_refused_field_is_not_refused_again() -> None:
    """fine_tune_epochs' default follows the model: a bad model is the one error reported."""
    with pytest.raises(pydantic.ValidationError) as refused:
        RunConfig.model_validate({"data_bucket": "/b", "model": "resnet"})
    assert refused_settings(refused.value).startswith("model: Input should be")
    assert "fine_tune_epochs" not in refused_settings(refused.value)


def test_refused_settings_are_one_line_and_bugs_keep_their_traceback() -> None:
    class Settings(pydantic.BaseModel):
        epochs: int = pydantic.Field(ge=1)

    @reports_errors("prog")
    def main(argv: list[str] | None = None) -> int:
        if argv == ["settings"]:
            Settings(epochs=0)
        if argv == ["mistake"]:
            raise ProjectError("the source is missing")
        raise KeyError("a bug")

    assert main(["settings"]) == 2
    assert main(["mistake"]) == 2
    with pytest.raises(KeyError, match="a bug"):
        main(["bug"])
