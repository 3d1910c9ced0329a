from __future__ import annotations

import argparse
from typing import Any

import pytest
from pydantic import ValidationError

from core.settings import (
    Environment,
    RunConfig,
    StagingParams,
    TrainingParams,
    add_arguments,
    config_from_params,
    join_uri,
    options_from_namespace,
    ort_threads_per_instance,
    param_specs,
    safe_name,
    to_arguments,
)
from harness.data import REPO_ROOT


def test_run_config_needs_a_bucket() -> None:
    with pytest.raises(ValidationError, match="data_bucket"):
        RunConfig.model_validate({})


def test_run_config_rejects_out_of_range_values() -> None:
    with pytest.raises(ValidationError, match="val_fraction"):
        RunConfig(data_bucket="/b", val_fraction=1.5)
    with pytest.raises(ValidationError, match="model"):
        RunConfig.model_validate({"data_bucket": "/b", "model": "resnet"})


def test_run_config_from_params_ignores_unknown_keys() -> None:
    config = config_from_params(RunConfig, {"data_bucket": "gs://b", "epochs": 3, "unrelated": 1})
    assert config.epochs == 3
    assert config.dataset_uri() == "gs://b/datasets/cats_vs_dogs"


def test_an_optional_string_left_empty_in_the_form_takes_its_default() -> None:
    """The trigger form sends null for an empty nullable field; the config gets the default."""
    specs = param_specs(Environment(platform="local"))
    assert specs["inference_input"]["type"] == ["null", "string"]
    assert specs["source_sha256"]["default"] is None
    config = config_from_params(
        RunConfig, {"data_bucket": "/b", "inference_input": None, "source_sha256": None}
    )
    assert config.inference_input == ""
    assert config.source_sha256 == ""


@pytest.mark.parametrize(("model", "fine_tune_epochs"), [("efficientnet_lite1", 2), ("small", 0)])
def test_fine_tuning_defaults_to_two_epochs_for_a_pretrained_backbone_only(
    model: str, fine_tune_epochs: int
) -> None:
    """The form leaves the field empty (null); the model it names fills it in."""
    specs = param_specs(Environment(platform="local"))
    assert specs["fine_tune_epochs"]["type"] == ["null", "integer"]
    assert specs["fine_tune_epochs"]["default"] is None
    params = {"data_bucket": "/b", "model": model, "fine_tune_epochs": None}
    assert config_from_params(RunConfig, params).fine_tune_epochs == fine_tune_epochs
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainingParams)
    parsed = options_from_namespace(parser, TrainingParams, parser.parse_args(["--model", model]))
    assert parsed.fine_tune_epochs == fine_tune_epochs
    assert options_from_namespace(parser, TrainingParams, parser.parse_args(to_arguments(parsed))) == parsed


def test_fine_tuning_a_model_trained_from_scratch_is_still_refused() -> None:
    with pytest.raises(ValidationError, match="fine_tune_epochs needs a pretrained"):
        RunConfig(data_bucket="/b", model="small", fine_tune_epochs=1)


@pytest.mark.parametrize(
    ("params", "steps_per_epoch", "head_epochs"),
    [
        ({}, 23, 10),  # make demo's 716 training images
        ({}, 498, 1),  # the whole cats vs dogs set
        ({}, 100, 3),
        ({}, 9, 10),  # never more than ten
        ({"model": "small"}, 23, 5),
        ({"epochs": 4}, 498, 4),
    ],
)
def test_epochs_0_sizes_the_head_s_epochs_from_the_training_set(
    params: dict[str, Any], steps_per_epoch: int, head_epochs: int
) -> None:
    assert TrainingParams(**params).head_epochs(steps_per_epoch) == head_epochs


def test_param_specs_mirror_the_model() -> None:
    specs = param_specs(Environment(platform="local"))
    assert set(specs) == set(RunConfig.model_fields)
    assert "default" not in specs["data_bucket"]  # required: a trigger without it is refused
    assert specs["data_bucket"]["type"] == "string"
    assert specs["epochs"] == {
        "default": 0,
        "description": RunConfig.model_fields["epochs"].description,
        "maximum": 500,
        "minimum": 0,
        "title": "epochs",
        "type": "integer",
    }
    assert specs["model"]["enum"] == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "small",
        "xception",
    ]
    assert specs["model"]["default"] == "efficientnet_lite0"


def test_platform_param_offers_only_the_deployed_platform() -> None:
    specs = param_specs(Environment(platform="kubernetes"))
    assert specs["platform"]["default"] == "kubernetes"
    assert specs["platform"]["enum"] == ["kubernetes"]


def test_environment_reads_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOGS_CATS_TRITON_HTTP_PORT", "9100")
    monkeypatch.setenv("DOGS_CATS_PLATFORM", "kubernetes")
    environment = Environment()
    assert environment.triton_http_port == 9100
    assert environment.platform == "kubernetes"
    monkeypatch.setenv("DOGS_CATS_PLATFORM", "mainframe")
    with pytest.raises(ValidationError, match="platform"):
        Environment()


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("gs://bucket/", ("a/", "/b"), "gs://bucket/a/b"),
        ("/tmp/x", ("", "y"), "/tmp/x/y"),
    ],
)
def test_join_uri(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join_uri(base, *parts) == expected


def test_safe_name_turns_run_ids_into_object_names() -> None:
    assert safe_name("manual__2026-11-22T02:45:01.955+00:00") == "manual__2026-11-22T02_45_01.955_00_00"


def test_the_docs_document_every_param() -> None:
    readme = (REPO_ROOT / "docs" / "parameters.md").read_text()
    missing = [name for name in RunConfig.model_fields if f"`{name}`" not in readme]
    assert missing == [], f"docs/parameters.md's params table lacks {missing}"


def test_local_server_threads_share_the_cores_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert ort_threads_per_instance(Environment(triton_instances=2)) == 4
    assert ort_threads_per_instance(Environment(triton_instances=16)) == 1
    assert ort_threads_per_instance(Environment(triton_instances=2, triton_ort_threads=3)) == 3


@pytest.mark.parametrize("command", ["stage", "train"])
def test_the_training_cli_help_shows_every_description(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse formats help text with %: a description's "98%" once made --help crash."""
    from training.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    fields = (StagingParams if command == "stage" else TrainingParams).model_fields
    for field in fields.values():
        assert " ".join((field.description or "").split()[:4]) in shown
