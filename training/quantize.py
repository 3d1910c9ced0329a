"""The INT8 twin of model.onnx: ONNX Runtime's static quantization, calibrated on training images.

QDQ format with per-channel weights (depthwise convolutions keep their accuracy
only per channel); activations are calibrated with MinMax on images of the
training split, never the validation split it is then judged on.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from core.constants import INPUT_NAME, OUTPUT_NAME

CALIBRATION_IMAGES = 256


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
