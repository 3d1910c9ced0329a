"""Triton python-backend model: encoded JPEG/PNG bytes -> uint8 RGB tensor.

Decodes with `core.images`, which packaging copies beside this file (the
version folder is on the stub's import path), so the server's pixels match the
client's. A request whose bytes do not decode gets its own error; the other
requests in the batch are answered normally.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from core.images import ImageDecodeError, decode_rgb


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_name: str = config["input"][0]["name"]
        self.output_name: str = config["output"][0]["name"]
        self.image_size = int(config["output"][0]["dims"][0])

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._decode(request) for request in requests]

    def _decode(self, request: Any) -> Any:
        encoded = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
        images = []
        for index, data in enumerate(encoded):
            try:
                images.append(decode_rgb(bytes(data), self.image_size))
            except ImageDecodeError as exc:
                error = pb_utils.TritonError(f"image {index}: {exc}", pb_utils.TritonError.INVALID_ARG)
                return pb_utils.InferenceResponse(error=error)
        output = pb_utils.Tensor(self.output_name, np.stack(images))
        return pb_utils.InferenceResponse(output_tensors=[output])
