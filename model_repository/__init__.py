"""Triton model-repository templates for the dogs_cats classifier.

Two flavours of the same model, fed the same `model.onnx`:

* `onnxruntime`: the cluster image (NGC tritonserver), Triton's ONNX Runtime
  backend. Triton removed its TensorFlow backend at 25.03, so ONNX it is.
* `python`: the local tritonserver from the nvidia-pytriton wheel, which ships
  only the python backend; `python_backend/model.py` runs the ONNX file with
  ONNX Runtime inside it.

Both declare the same tensors, so a client cannot tell them apart.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

Flavour = Literal["python", "onnxruntime"]

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
LABELS_FILE = "labels.txt"

_HEADS: dict[str, str] = {
    "python": 'backend: "python"',
    "onnxruntime": 'platform: "onnxruntime_onnx"',
}
_INSTANCE_KINDS: dict[str, str] = {"python": "KIND_CPU", "onnxruntime": "KIND_GPU"}


def config_pbtxt(
    flavour: Flavour, *, model_name: str, image_size: int, num_classes: int, max_batch_size: int
) -> str:
    """config.pbtxt text; the output names labels.txt so Triton's classification
    extension can answer top-k labels (`class_count`)."""
    return f"""name: "{model_name}"
{_HEADS[flavour]}
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_UINT8
    dims: [ {image_size}, {image_size}, 3 ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
    label_filename: "{LABELS_FILE}"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
instance_group [
  {{
    count: 1
    kind: {_INSTANCE_KINDS[flavour]}
  }}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def python_backend_model() -> bytes:
    """Source of the python-backend model that runs model.onnx with ONNX Runtime."""
    return resources.files(__package__).joinpath("python_backend", "model.py").read_bytes()
