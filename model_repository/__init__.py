"""Triton model-repository templates for the dogs_cats classifier.

Two flavours of the same classifier, fed the same `model.onnx`:

* `onnxruntime`: the cluster image (NGC tritonserver), Triton's ONNX Runtime
  backend on a GPU. Triton removed its TensorFlow backend at 25.03, so ONNX it is.
* `python`: the local tritonserver from the nvidia-pytriton wheel, which ships
  only the python backend; `python_backend/model.py` runs the ONNX file with
  ONNX Runtime inside it.

Both declare the same tensors, so a client cannot tell them apart. Beside the
classifier sit a python-backend preprocessing model and the ensemble
`<model>_jpeg` that chains them, so clients may send encoded JPEG/PNG bytes
instead of decoded tensors.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

Flavour = Literal["python", "onnxruntime"]

INPUT_NAME = "image"
ENCODED_INPUT_NAME = "image_bytes"
OUTPUT_NAME = "probabilities"
LABELS_FILE = "labels.txt"
DECODE_MODULE = "images.py"  # pipeline/images.py, copied beside the preprocessing model

_HEADS: dict[str, str] = {
    "python": 'backend: "python"',
    "onnxruntime": 'platform: "onnxruntime_onnx"',
}
_INSTANCE_KINDS: dict[str, str] = {"python": "KIND_CPU", "onnxruntime": "KIND_GPU"}
# ONNX Runtime's intra-op threads per instance: Triton's backend parameter, or ours for model.py.
_ORT_THREADS: dict[str, str] = {
    "python": 'parameters {{ key: "intra_op_threads" value: {{ string_value: "{threads}" }} }}\n',
    "onnxruntime": 'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}\n',
}
# TensorRT builds an FP16 engine from the ONNX graph at load time (minutes, once
# per pod start); ONNX Runtime falls back to CUDA for anything TensorRT rejects.
_TENSORRT_FP16 = """optimization {
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
      }
    ]
  }
}
"""


def ensemble_name(model_name: str) -> str:
    return f"{model_name}_jpeg"


def preprocess_name(model_name: str) -> str:
    return f"{model_name}_preprocess"


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 4 up to the limit, plus the limit itself.

    The dynamic batcher forms one of these when it can rather than waiting for
    a full batch, which keeps latency down at low load.
    """
    sizes = {size for size in (4, 8, 16, 32, 64, 128, 256) if size < max_batch_size}
    return sorted(sizes | {max_batch_size})


def _dynamic_batching(max_batch_size: int, queue_delay_us: int) -> str:
    sizes = ", ".join(str(size) for size in preferred_batch_sizes(max_batch_size))
    return f"""dynamic_batching {{
  preferred_batch_size: [ {sizes} ]
  max_queue_delay_microseconds: {queue_delay_us}
}}"""


def _tensor(section: str, name: str, data_type: str, dims: str, labelled: bool = False) -> str:
    """One `input [...]` or `output [...]` block of a config.pbtxt."""
    label = f'\n    label_filename: "{LABELS_FILE}"' if labelled else ""
    return f"""{section} [
  {{
    name: "{name}"
    data_type: {data_type}
    dims: [ {dims} ]{label}
  }}
]"""


def config_pbtxt(
    flavour: Flavour,
    *,
    model_name: str,
    image_size: int,
    num_classes: int,
    max_batch_size: int,
    tensorrt_fp16: bool = False,
    instances: int = 1,
    ort_threads: int = 0,
) -> str:
    """The classifier's config.pbtxt; the output names labels.txt so Triton's
    classification extension can answer top-k labels (`class_count`).

    `instances` x `ort_threads` should match the cores: on a CPU, two instances
    of one thread each may beat one of two (benchmarks/README.md); 0 threads
    leaves ONNX Runtime its default (one per core).
    """
    if tensorrt_fp16 and flavour != "onnxruntime":
        raise ValueError("TensorRT FP16 needs the onnxruntime flavour (a GPU server)")
    threads = _ORT_THREADS[flavour].format(threads=ort_threads) if ort_threads else ""
    return f"""name: "{model_name}"
{_HEADS[flavour]}
max_batch_size: {max_batch_size}
{_tensor("input", INPUT_NAME, "TYPE_UINT8", f"{image_size}, {image_size}, 3")}
{_tensor("output", OUTPUT_NAME, "TYPE_FP32", str(num_classes), labelled=True)}
{_dynamic_batching(max_batch_size, 2000)}
instance_group [
  {{
    count: {instances}
    kind: {_INSTANCE_KINDS[flavour]}
  }}
]
{threads}{_TENSORRT_FP16 if tensorrt_fp16 else ""}version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def preprocess_config_pbtxt(*, model_name: str, image_size: int, max_batch_size: int) -> str:
    """Python-backend model: encoded image bytes in, uint8 RGB tensor out.

    It always runs on CPU: decoding is Pillow's work, and two instances let one
    decode while the other hands a batch on.
    """
    return f"""name: "{preprocess_name(model_name)}"
backend: "python"
max_batch_size: {max_batch_size}
{_tensor("input", ENCODED_INPUT_NAME, "TYPE_STRING", "1")}
{_tensor("output", INPUT_NAME, "TYPE_UINT8", f"{image_size}, {image_size}, 3")}
{_dynamic_batching(max_batch_size, 1000)}
instance_group [
  {{
    count: 2
    kind: KIND_CPU
  }}
]
"""


def ensemble_config_pbtxt(*, model_name: str, num_classes: int, max_batch_size: int) -> str:
    """`<model>_jpeg`: preprocess then classify, one request from the client's side."""
    return f"""name: "{ensemble_name(model_name)}"
platform: "ensemble"
max_batch_size: {max_batch_size}
{_tensor("input", ENCODED_INPUT_NAME, "TYPE_STRING", "1")}
{_tensor("output", OUTPUT_NAME, "TYPE_FP32", str(num_classes), labelled=True)}
ensemble_scheduling {{
  step [
    {{
      model_name: "{preprocess_name(model_name)}"
      model_version: -1
      input_map {{ key: "{ENCODED_INPUT_NAME}" value: "{ENCODED_INPUT_NAME}" }}
      output_map {{ key: "{INPUT_NAME}" value: "decoded_image" }}
    }},
    {{
      model_name: "{model_name}"
      model_version: -1
      input_map {{ key: "{INPUT_NAME}" value: "decoded_image" }}
      output_map {{ key: "{OUTPUT_NAME}" value: "{OUTPUT_NAME}" }}
    }}
  ]
}}
"""


def _package_file(*parts: str) -> bytes:
    return resources.files(__package__).joinpath(*parts).read_bytes()


def python_backend_model() -> bytes:
    """Source of the python-backend model that runs model.onnx with ONNX Runtime."""
    return _package_file("python_backend", "model.py")


def preprocess_model() -> bytes:
    """Source of the python-backend model that decodes encoded images."""
    return _package_file("preprocess", "model.py")


def decode_module() -> bytes:
    """pipeline/images.py: the server decodes exactly as the client and staging do."""
    return resources.files("pipeline").joinpath("images.py").read_bytes()
