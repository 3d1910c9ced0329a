"""Triton python-backend model: runs the version's model.onnx with ONNX Runtime.

Used only by the local tritonserver (nvidia-pytriton ships no ONNX Runtime
backend). Requests gathered by the dynamic batcher run as one ONNX call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_name: str = config["input"][0]["name"]
        self.output_name: str = config["output"][0]["name"]
        model_file = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        threads = config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0")
        options.intra_op_num_threads = int(threads)  # 0: one per core
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        images = [
            pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests
        ]
        try:
            (probabilities,) = self.session.run([self.output_name], {self.input_name: np.concatenate(images)})
        except Exception as exc:
            # Raised, Triton sends the error to every caller of the batch and counts each request
            # as failed (nv_inference_request_failure, which the canary analysis reads); error
            # responses returned instead would count as successes.
            raise pb_utils.TritonModelException(f"inference failed: {exc}") from exc
        responses = []
        start = 0
        for image in images:
            end = start + len(image)
            output = pb_utils.Tensor(self.output_name, probabilities[start:end].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            start = end
        return responses
