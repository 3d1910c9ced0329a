"""tritonclient wrappers: model metadata, image preprocessing, classification.

Tensors always travel as binary data (JSON tensors are 10-20x slower), and
labels come from Triton's classification extension (`class_count`), so a
client needs no copy of labels.txt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tritonclient.http as httpclient

from model_repository import ENCODED_INPUT_NAME, OUTPUT_NAME

DEFAULT_MODEL = "dogs_cats"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_name: str
    output_name: str
    image_size: int
    num_classes: int
    max_batch_size: int


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float


def model_info(client: httpclient.InferenceServerClient, model_name: str = DEFAULT_MODEL) -> ModelInfo:
    """Read tensor names, image size and batch limit from the served config."""
    config = client.get_model_config(model_name)
    model_input, model_output = config["input"][0], config["output"][0]
    height = int(model_input["dims"][0])
    return ModelInfo(
        name=model_name,
        input_name=model_input["name"],
        output_name=model_output["name"],
        image_size=height,
        num_classes=int(model_output["dims"][0]),
        max_batch_size=int(config.get("max_batch_size", 1)) or 1,
    )


def classify(
    client: httpclient.InferenceServerClient, info: ModelInfo, images: np.ndarray, top_k: int = 1
) -> list[list[Prediction]]:
    """Top-k predictions for a batch of preprocessed images (binary tensors)."""
    model_input = httpclient.InferInput(info.input_name, list(images.shape), "UINT8")
    model_input.set_data_from_numpy(images, binary_data=True)
    output = httpclient.InferRequestedOutput(info.output_name, binary_data=True, class_count=top_k)
    result = client.infer(info.name, inputs=[model_input], outputs=[output])
    rows = result.as_numpy(info.output_name).reshape(len(images), top_k)
    return [[_parse_classification(entry) for entry in row] for row in rows]


def classify_encoded(
    client: httpclient.InferenceServerClient, model_name: str, blobs: list[bytes], top_k: int = 1
) -> list[list[Prediction]]:
    """Top-k predictions for encoded JPEG/PNG files, decoded by the server's ensemble."""
    encoded = np.array([[blob] for blob in blobs], dtype=np.object_)
    model_input = httpclient.InferInput(ENCODED_INPUT_NAME, list(encoded.shape), "BYTES")
    model_input.set_data_from_numpy(encoded, binary_data=True)
    output = httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=True, class_count=top_k)
    result = client.infer(model_name, inputs=[model_input], outputs=[output])
    rows = result.as_numpy(OUTPUT_NAME).reshape(len(blobs), top_k)
    return [[_parse_classification(entry) for entry in row] for row in rows]


def _parse_classification(entry: bytes) -> Prediction:
    """Triton's classification entries read b"<score>:<index>:<label>"."""
    score, _index, label = entry.decode("utf-8").split(":", 2)
    return Prediction(label=label, confidence=float(score))
