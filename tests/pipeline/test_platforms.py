"""The platform seam: which platform a deployment gets, and the local process runner."""

from __future__ import annotations

import sys

import pytest

from core.settings import Environment
from pipeline.platforms import (
    KubernetesPlatform,
    LocalPlatform,
    TrainingFailed,
    platform_for,
    run_training_process,
)


def test_only_the_local_server_takes_this_machine_s_instances_and_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    environment = Environment(triton_instances=2)
    assert LocalPlatform(environment).instance_options() == {"instances": 2, "ort_threads": 4}
    assert KubernetesPlatform(environment).instance_options() == {}


def test_platform_is_chosen_by_the_environment() -> None:
    assert isinstance(platform_for(Environment(platform="local")), LocalPlatform)
    chosen = platform_for(Environment(platform="kubernetes"))
    assert isinstance(chosen, KubernetesPlatform)
    assert chosen.serving_flavour == "onnxruntime"


def test_a_failed_training_process_reports_its_last_lines() -> None:
    with pytest.raises(TrainingFailed, match="exited with code 2") as raised:
        run_training_process(["--epochs", "3"], sys.executable)
    assert "the following arguments are required: --dataset-uri, --output-uri" in str(raised.value)
