"""The INT8 twin of model.onnx: ONNX Runtime's static quantization, calibrated on training images.

QDQ format with per-channel weights (depthwise convolutions keep their accuracy
only per channel) in 7 bits (`reduce_range`, below); activations are calibrated
with MinMax on images of the training split, never the test split it is then
judged on. `int8_verdict` says whether the twin may be served in the FP32
model's place.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from core.constants import INPUT_NAME, OUTPUT_NAME
from core.metrics import allowed_loss

CALIBRATION_IMAGES = 256
# INT8 is served in FP32's place only when on the test split it gives FP32's label to at least
# this share of images ...
MIN_AGREEMENT = 0.99
# ... and loses no more accuracy than this many points or one image, whichever is larger.
MAX_ACCURACY_DROP_POINTS = 0.5


def calibration_sample(files: list[dict[str, Any]], count: int = CALIBRATION_IMAGES) -> list[dict[str, Any]]:
    """Up to `count` manifest entries taken round-robin across classes, in manifest order.

    Calibration must see every class: the manifest lists files by path, so its first 256
    training images are all of one class, and ranges learnt from one class alone clipped
    the other's activations (every image then came out as that class: 50 % on the demo).
    """
    by_label: dict[str, list[dict[str, Any]]] = {}
    for entry in files:
        by_label.setdefault(entry["label"], []).append(entry)
    interleaved = [entry for group in itertools.zip_longest(*by_label.values()) for entry in group if entry]
    return interleaved[:count]


class _Batches(CalibrationDataReader):
    """Calibration feeds: uint8 image batches under the model's input name."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = ({INPUT_NAME: batch} for batch in batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(
    fp32_model: Path, int8_model: Path, calibration: Iterable[np.ndarray], seven_bit_weights: bool = True
) -> None:
    """Write the twin; `seven_bit_weights=False` only for `benchmarks.int8_cpus`, which shows why not."""
    with tempfile.TemporaryDirectory(prefix="dogs-cats-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph clean-up first; the spatial dims are fixed, so ONNX's own
        # inference suffices (the symbolic pass would need sympy).
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_model),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # Weights in 7 bits, so the twin gives the same answers on every x86 CPU. Without VNNI
            # (AVX2, early AVX-512) ONNX Runtime sums pairs of uint8 x int8 products in int16, and
            # 8-bit weights overflow it: the same file that passed its verdict on a VNNI host gave
            # FP32's label to 98.5% of 400 validation images on an emulated Haswell, 99.5% on VNNI.
            reduce_range=seven_bit_weights,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=head_nodes(onnx.load(str(prepared))),
        )


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The logit layer (the graph's last MatMul or Gemm) and every node after it, kept in FP32:
    quantized, the probabilities came in steps of 1/255 and summed to 0.999, which blunts
    log-loss and calibration. The head is one small matrix: it costs nothing to keep."""
    nodes = list(model.graph.node)
    last = max(index for index, node in enumerate(nodes) if node.op_type in ("MatMul", "Gemm"))
    downstream, names = set(nodes[last].output), [nodes[last].name]
    for node in nodes[last + 1 :]:  # ONNX lists nodes in topological order
        if downstream.intersection(node.input):
            downstream.update(node.output)
            names.append(node.name)
    return names


def onnx_probabilities(model: Path, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Probabilities of an ONNX model over uint8 batches, as the served model computes them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0] for batch in batches])


def int8_verdict(y_true: np.ndarray, fp32: np.ndarray, int8: np.ndarray) -> dict[str, Any]:
    """Whether the INT8 twin may be served in FP32's place, judged on the same test images:
    `serve`, the figures, and `why` in words (the packaging log and the model card say it)."""
    fp32_labels, int8_labels = fp32.argmax(axis=1), int8.argmax(axis=1)
    images = len(y_true)
    agreement = float((fp32_labels == int8_labels).mean())
    lost = int((fp32_labels == y_true).sum()) - int((int8_labels == y_true).sum())
    allowed = allowed_loss(MAX_ACCURACY_DROP_POINTS / 100, images) * images  # in images
    figures = (
        f"on {images} test images INT8 gives FP32's label to {agreement:.2%} (at least {MIN_AGREEMENT:.0%} "
        f"needed) and gets {abs(lost)} {'fewer' if lost >= 0 else 'more'} right "
        f"(at most {math.floor(allowed)} fewer allowed: {MAX_ACCURACY_DROP_POINTS} points or one image)"
    )
    serve = agreement >= MIN_AGREEMENT and lost <= allowed + 1e-9  # a product of floats
    return {
        "serve": serve,
        "agreement": round(agreement, 4),
        "images_lost": lost,
        "accuracy_change_points": round(-100 * lost / images, 2),
        "why": f"INT8 may be served: {figures}" if serve else f"FP32 is served: {figures}",
    }
