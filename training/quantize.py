"""The INT8 twin of model.onnx: ONNX Runtime's static quantization, calibrated on training images.

QDQ format with per-channel weights (depthwise convolutions keep their accuracy
only per channel); activations are calibrated with MinMax on images of the
training split, never the validation split it is then judged on.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from core.constants import INPUT_NAME, OUTPUT_NAME

CALIBRATION_IMAGES = 256


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


def quantize_int8(fp32_model: Path, int8_model: Path, calibration: Iterable[np.ndarray]) -> None:
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
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def onnx_probabilities(model: Path, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Probabilities of an ONNX model over uint8 batches, as the served model computes them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0] for batch in batches])
