"""Every config.pbtxt this project writes, built from `ModelConfig`, Triton's own protobuf
schema (shipped in tritonclient), in protobuf's text format: a misspelt field fails here, when
the config is built, not when Triton loads it.

Two flavours of the same classifier, fed the same `model.onnx`:

* `onnxruntime`: the cluster image (NGC tritonserver), Triton's ONNX Runtime
  backend on a GPU. Triton removed its TensorFlow backend at 25.03, so ONNX it is.
* `python`: the local tritonserver from the nvidia-pytriton wheel, which ships
  only the python backend; `python_backend/model.py` runs the ONNX file with
  ONNX Runtime inside it.

Both declare the same tensors, so a client cannot tell them apart. Beside the
classifier sit a python-backend preprocessing model and the ensemble
`<model>_jpeg` that chains them, so clients may send encoded JPEG/PNG bytes
instead of decoded tensors. What each function writes for the DAG's defaults is
checked in under `reference/` (tests/model_repository/test_config.py compares).
"""

from __future__ import annotations

from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from core.constants import (
    ENCODED_INPUT_NAME,
    INPUT_NAME,
    LABELS_FILE,
    OUTPUT_NAME,
    ensemble_name,
    preprocess_name,
)

Flavour = Literal["python", "onnxruntime"]

_INSTANCE_KINDS: dict[str, int] = {
    "python": pb.ModelInstanceGroup.KIND_CPU,
    "onnxruntime": pb.ModelInstanceGroup.KIND_GPU,
}
# ONNX Runtime's intra-op threads per instance: Triton's backend parameter, or ours for model.py.
_ORT_THREADS_PARAMETER: dict[str, str] = {
    "python": "intra_op_threads",
    "onnxruntime": "intra_op_thread_count",
}
TENSORRT_WORKSPACE_BYTES = 1 << 30
# Images per execution of a CPU instance: in-process ONNX Runtime's best batch on CPU
# (benchmarks/README.md). The batcher merges smaller requests up to it, never two of it:
# with one instance per core, a merged batch of 16 leaves the other instance idle.
CPU_BATCH = 8


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 4 up to the limit, plus the limit itself.

    The dynamic batcher forms one of these when it can rather than waiting for
    a full batch, which keeps latency down at low load.
    """
    sizes = {size for size in (4, 8, 16, 32, 64, 128, 256) if size < max_batch_size}
    return sorted(sizes | {max_batch_size})


def _batched_config(name: str, max_batch_size: int) -> pb.ModelConfig:
    return pb.ModelConfig(name=name, max_batch_size=max_batch_size)


def _dynamic_batching(config: pb.ModelConfig, queue_delay_us: int) -> None:
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(config.max_batch_size))
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us


def _cpu_batching(config: pb.ModelConfig) -> None:
    """Batches of at most CPU_BATCH images where requests are smaller, formed at once.

    The batcher sends the largest preferred size it can form: with only CPU_BATCH
    preferred, two queued requests of 8 go to two instances instead of one. A queue
    delay would let it wait for more, and it then merged past the preferred size."""
    config.dynamic_batching.preferred_batch_size.append(min(CPU_BATCH, config.max_batch_size))


def _image_tensor(image_size: int) -> dict:
    return {"name": INPUT_NAME, "data_type": pb.TYPE_UINT8, "dims": [image_size, image_size, 3]}


def _encoded_tensor() -> dict:
    return {"name": ENCODED_INPUT_NAME, "data_type": pb.TYPE_STRING, "dims": [1]}


def _probabilities_tensor(num_classes: int) -> dict:
    """Names labels.txt, so Triton's classification extension answers top-k labels (`class_count`)."""
    return {
        "name": OUTPUT_NAME,
        "data_type": pb.TYPE_FP32,
        "dims": [num_classes],
        "label_filename": LABELS_FILE,
    }


def _text(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


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
    """The classifier's config.pbtxt.

    `instances` x `ort_threads` should match the cores: on a CPU, two instances
    of one thread each may beat one of two (benchmarks/README.md); 0 threads
    leaves ONNX Runtime its default (one per core).
    """
    if tensorrt_fp16 and flavour != "onnxruntime":
        raise ValueError("TensorRT FP16 needs the onnxruntime flavour (a GPU server)")
    config = _batched_config(model_name, max_batch_size)
    # An image, declared as one: clients such as Triton's image_client.py read the layout here.
    config.input.add(**_image_tensor(image_size), format=pb.ModelInput.FORMAT_NHWC)
    config.output.add(**_probabilities_tensor(num_classes))
    if flavour == "python":  # CPU instances, one per core
        config.backend = "python"
        _cpu_batching(config)
    else:
        config.platform = "onnxruntime_onnx"
        _dynamic_batching(config, queue_delay_us=2000)
    config.instance_group.add(count=instances, kind=_INSTANCE_KINDS[flavour])
    if ort_threads:
        config.parameters[_ORT_THREADS_PARAMETER[flavour]].string_value = str(ort_threads)
    if tensorrt_fp16:
        # TensorRT builds an FP16 engine from the ONNX graph at load time (minutes, once
        # per pod start); ONNX Runtime falls back to CUDA for anything TensorRT rejects.
        config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt",
            parameters={"precision_mode": "FP16", "max_workspace_size_bytes": str(TENSORRT_WORKSPACE_BYTES)},
        )
    config.version_policy.latest.num_versions = 1
    return _text(config)


def preprocess_config_pbtxt(*, model_name: str, image_size: int, max_batch_size: int) -> str:
    """Python-backend model: encoded image bytes in, uint8 RGB tensor out.

    It always runs on CPU: decoding is Pillow's work, and two instances let one
    decode while the other hands a batch on.
    """
    config = _batched_config(preprocess_name(model_name), max_batch_size)
    config.backend = "python"
    config.input.add(**_encoded_tensor())
    config.output.add(**_image_tensor(image_size))
    _dynamic_batching(config, queue_delay_us=1000)
    config.instance_group.add(count=2, kind=pb.ModelInstanceGroup.KIND_CPU)
    return _text(config)


def ensemble_config_pbtxt(*, model_name: str, num_classes: int, max_batch_size: int) -> str:
    """`<model>_jpeg`: preprocess then classify, one request from the client's side."""
    config = _batched_config(ensemble_name(model_name), max_batch_size)
    config.platform = "ensemble"
    config.input.add(**_encoded_tensor())
    config.output.add(**_probabilities_tensor(num_classes))
    decoded = "decoded_image"
    config.ensemble_scheduling.step.add(
        model_name=preprocess_name(model_name),
        model_version=-1,
        input_map={ENCODED_INPUT_NAME: ENCODED_INPUT_NAME},
        output_map={INPUT_NAME: decoded},
    )
    config.ensemble_scheduling.step.add(
        model_name=model_name,
        model_version=-1,
        input_map={INPUT_NAME: decoded},
        output_map={OUTPUT_NAME: OUTPUT_NAME},
    )
    return _text(config)
