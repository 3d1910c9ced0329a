"""One Triton connection over HTTP or gRPC: model metadata and classification.

Tensors always travel as binary data (JSON tensors are 10-20x slower), and
labels come from Triton's classification extension (`class_count`), so a
client needs no copy of labels.txt. A connection is not shared between
threads (tritonclient's HTTP client is not thread-safe): give each worker its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from geventhttpclient.response import HTTPConnectionClosed
from tritonclient.utils import InferenceServerException

from core.constants import ENCODED_INPUT_NAME, GRPC_PORT, HTTP_PORT, MODEL_NAME, OUTPUT_NAME, ensemble_name
from core.settings import InferenceProtocol

PROTOCOLS: tuple[InferenceProtocol, ...] = get_args(InferenceProtocol)
DEFAULT_PORTS: dict[InferenceProtocol, int] = {"http": HTTP_PORT, "grpc": GRPC_PORT}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    input_name: str
    output_name: str
    image_size: int
    num_classes: int
    max_batch_size: int
    preferred_batch_size: int  # the largest batch its dynamic batcher forms at once (Triton keeps it <= max)


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float


class Triton:
    """A tritonclient connection of either protocol, with explicit timeouts."""

    def __init__(self, url: str, protocol: InferenceProtocol = "http", timeout_s: float = 60.0) -> None:
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self.module: Any = httpclient if protocol == "http" else grpcclient
        self.client: Any = self._connect()
        self.last_latency_s = 0.0

    def _connect(self) -> Any:
        if self.protocol == "http":
            return httpclient.InferenceServerClient(
                self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
        return grpcclient.InferenceServerClient(self.url)

    def model_config(self, model_name: str) -> dict[str, Any]:
        if self.protocol == "http":
            config: dict[str, Any] = self.client.get_model_config(model_name)
            return config
        return dict(self.client.get_model_config(model_name, as_json=True)["config"])

    def has_model(self, model_name: str) -> bool:
        return bool(self.client.is_model_ready(model_name))

    def served_versions(self, model_name: str) -> list[str]:
        if self.protocol == "http":
            return list(self.client.get_model_metadata(model_name)["versions"])
        return list(self.client.get_model_metadata(model_name, as_json=True)["versions"])

    def infer(self, model_name: str, inputs: list[Any], output: Any) -> Any:
        """One request; its client-side latency is kept in `last_latency_s`.

        A request whose connection drops before an answer is sent once more, on a
        new connection. Behind a Service a kept-alive connection stays on one pod;
        when a rollout replaces that pod, Triton keeps answering on the connection
        until its exit timeout and then exits under whatever request is in flight.
        Inference changes nothing on the server, so sending it again is safe; the
        HTTP client resends only idempotent methods by itself, and infer is a POST."""
        started = time.perf_counter()
        try:
            result = self._infer(model_name, inputs, output)
        except Exception as failure:
            if not _connection_dropped(failure):
                raise
            self.client.close()
            self.client = self._connect()
            result = self._infer(model_name, inputs, output)
        self.last_latency_s = time.perf_counter() - started
        return result

    def _infer(self, model_name: str, inputs: list[Any], output: Any) -> Any:
        if self.protocol == "http":
            return self.client.infer(model_name, inputs=inputs, outputs=[output])
        return self.client.infer(model_name, inputs=inputs, outputs=[output], client_timeout=self.timeout_s)

    def close(self) -> None:
        self.client.close()


def model_info(triton: Triton, model_name: str = MODEL_NAME) -> ModelInfo:
    """Read tensor names, image size and batch sizes from the served config."""
    config = triton.model_config(model_name)
    model_input, model_output = config["input"][0], config["output"][0]
    max_batch_size = int(config.get("max_batch_size", 1)) or 1
    preferred = config.get("dynamic_batching", {}).get("preferred_batch_size", [])
    return ModelInfo(
        name=model_name,
        input_name=model_input["name"],
        output_name=model_output["name"],
        image_size=int(model_input["dims"][0]),
        num_classes=int(model_output["dims"][0]),
        max_batch_size=max_batch_size,
        preferred_batch_size=max((int(size) for size in preferred), default=max_batch_size),
    )


def _connection_dropped(failure: Exception) -> bool:
    """The connection went away under the request: no answer came from the server."""
    if isinstance(failure, InferenceServerException):
        return failure.status() == "StatusCode.UNAVAILABLE"  # gRPC: the channel lost its server
    return isinstance(failure, ConnectionError | HTTPConnectionClosed)


def classify(triton: Triton, info: ModelInfo, images: np.ndarray, top_k: int = 1) -> list[list[Prediction]]:
    """Top-k predictions for a batch of preprocessed images (binary tensors)."""
    return _top_k(triton, info.name, info.input_name, images, "UINT8", info.output_name, top_k)


def classify_encoded(
    triton: Triton, model_name: str, blobs: list[bytes], top_k: int = 1
) -> list[list[Prediction]]:
    """Top-k predictions for encoded JPEG/PNG files, decoded by the server's ensemble."""
    encoded = np.array([[blob] for blob in blobs], dtype=np.object_)
    return _top_k(triton, ensemble_name(model_name), ENCODED_INPUT_NAME, encoded, "BYTES", OUTPUT_NAME, top_k)


def _top_k(
    triton: Triton, model: str, input_name: str, data: np.ndarray, datatype: str, output_name: str, top_k: int
) -> list[list[Prediction]]:
    """One request with one binary input tensor, answered through the classification extension."""
    binary = {"binary_data": True} if triton.protocol == "http" else {}  # gRPC tensors are always binary
    model_input = triton.module.InferInput(input_name, list(data.shape), datatype)
    model_input.set_data_from_numpy(data, **binary)
    output = triton.module.InferRequestedOutput(output_name, class_count=top_k, **binary)
    rows = triton.infer(model, [model_input], output).as_numpy(output_name)
    return [[_parse_classification(entry) for entry in row] for row in rows.reshape(len(data), top_k)]


def class_names(triton: Triton, info: ModelInfo) -> tuple[str, ...]:
    """Every label the model has: the classification extension ranks all of them for one image."""
    blank = np.zeros((1, info.image_size, info.image_size, 3), dtype=np.uint8)
    (ranked,) = classify(triton, info, blank, top_k=info.num_classes)
    return tuple(sorted(prediction.label for prediction in ranked))


def served_labels(url: str, model_name: str, protocol: InferenceProtocol = "http") -> tuple[str, ...]:
    """The labels the model at `url` serves: folders of these names are ground truth."""
    triton = Triton(url, protocol)
    try:
        return class_names(triton, model_info(triton, model_name))
    finally:
        triton.close()


def is_refusal(exc: Exception) -> bool:
    """The server answered that this request is bad (HTTP 400, gRPC INVALID_ARGUMENT):
    retrying it cannot help, and the message says why."""
    return isinstance(exc, InferenceServerException) and str(exc.status()) in {
        "400",
        "StatusCode.INVALID_ARGUMENT",
    }


def _parse_classification(entry: bytes) -> Prediction:
    """Triton's classification entries read b"<score>:<index>:<label>"."""
    score, _index, label = entry.decode("utf-8").split(":", 2)
    return Prediction(label=label, confidence=float(score))
