"""Export: the SavedModel (artifact of record) and its ONNX twin, checked for parity.

The exported signature takes uint8 images named `image` and returns
`probabilities` (one column per class, in labels.txt order), so servers and
clients never apply a sigmoid or softmax themselves.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.constants import INPUT_NAME, OUTPUT_NAME

PARITY_TOLERANCE = 1e-4


def probabilities_function(model: keras.Model, image_size: int) -> tf.types.experimental.GenericFunction:
    """A tf.function from uint8 images to class probabilities."""
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(image, training=False)
        if logits.shape[-1] == 1:
            positive = tf.sigmoid(logits)
            probabilities = tf.concat([1.0 - positive, positive], axis=-1)
        else:
            probabilities = tf.nn.softmax(logits, axis=-1)
        return {OUTPUT_NAME: tf.identity(probabilities, name=OUTPUT_NAME)}

    return serve


def export_saved_model(model: keras.Model, image_size: int, path: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", probabilities_function(model, image_size))
    archive.write_out(str(path), verbose=False)


def export_onnx(model: keras.Model, image_size: int, path: Path, opset: int = 17) -> None:
    import tf2onnx

    serve = probabilities_function(model, image_size)
    tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=opset, output_path=str(path)
    )


def parity(saved_model: Path, onnx_model: Path, images: np.ndarray) -> float:
    """Max abs difference between SavedModel and ONNX Runtime on the same batch."""
    import onnxruntime as ort

    loaded = tf.saved_model.load(str(saved_model))
    expected = loaded.signatures["serving_default"](**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    return float(np.max(np.abs(expected - actual)))
