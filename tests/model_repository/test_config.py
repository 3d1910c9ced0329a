"""The config.pbtxt files as Triton's tutorials show them: what `model_repository.config`
writes for the DAG's defaults is checked in under model_repository/reference/, so a reader
sees each config without running code, and a change to the code shows up as a change there."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from core.constants import MODEL_NAME
from core.settings import RunConfig
from harness.data import REPO_ROOT
from model_repository.config import Flavour, config_pbtxt, ensemble_config_pbtxt, preprocess_config_pbtxt

REFERENCE = REPO_ROOT / "model_repository" / "reference"
DEFAULTS = RunConfig(data_bucket="/unused")
NUM_CLASSES = 2


def _classifier(flavour: Flavour, instances: int = 1, ort_threads: int = 0) -> str:
    return config_pbtxt(
        flavour,
        model_name=MODEL_NAME,
        image_size=DEFAULTS.image_size,
        num_classes=NUM_CLASSES,
        max_batch_size=DEFAULTS.max_batch_size,
        instances=instances,
        ort_threads=ort_threads,
    )


WRITTEN = {
    # The local server on 2 cores: two instances of one ONNX Runtime thread each.
    "dogs_cats.python.pbtxt": lambda: _classifier("python", instances=2, ort_threads=1),
    # A GPU pod: one instance, ONNX Runtime's own threads.
    "dogs_cats.onnxruntime.pbtxt": lambda: _classifier("onnxruntime"),
    "dogs_cats_preprocess.pbtxt": lambda: preprocess_config_pbtxt(
        model_name=MODEL_NAME, image_size=DEFAULTS.image_size, max_batch_size=DEFAULTS.max_batch_size
    ),
    "dogs_cats_jpeg.pbtxt": lambda: ensemble_config_pbtxt(
        model_name=MODEL_NAME, num_classes=NUM_CLASSES, max_batch_size=DEFAULTS.max_batch_size
    ),
}


def _without_comments(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_the_reference_config_is_what_the_code_writes(name: str) -> None:
    reference = REFERENCE / name
    assert reference.read_text().startswith("# "), "each reference says what it is"
    written = WRITTEN[name]()
    assert _without_comments(reference.read_text()) == written, (
        f"{name} changed; the code now writes:\n{written}"
    )
    text_format.Parse(reference.read_text(), pb.ModelConfig())  # Triton's schema, comments and all


def test_every_reference_file_is_compared() -> None:
    assert sorted(path.name for path in REFERENCE.glob("*.pbtxt")) == sorted(WRITTEN)


def test_the_image_input_declares_its_layout() -> None:
    """Triton's example image_client.py refuses an image input without FORMAT_NHWC or _NCHW."""
    for flavour in ("dogs_cats.python.pbtxt", "dogs_cats.onnxruntime.pbtxt"):
        (image,) = text_format.Parse(WRITTEN[flavour](), pb.ModelConfig()).input
        assert image.format == pb.ModelInput.FORMAT_NHWC
        assert len(image.dims) == 3


@pytest.mark.integration
def test_triton_serves_the_declared_layout(served_model: dict) -> None:
    """The real tritonserver loads the config with the layout and reports it to clients."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(served_model["url"])
    try:
        config = client.get_model_config(MODEL_NAME)
        metadata = client.get_model_metadata(MODEL_NAME)
    finally:
        client.close()
    assert config["input"][0]["format"] == "FORMAT_NHWC"
    assert metadata["inputs"][0]["shape"] == [-1, 32, 32, 3]
