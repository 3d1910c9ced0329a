"""Stage 2: train on a staged dataset and write the model folder.

`{output_uri}/` receives `saved_model/`, `model.onnx`, `labels.txt` and
`metrics.json`. The same function runs as a local process or in a GPU pod.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import storage
from pipeline.settings import join_uri
from training.export import PARITY_TOLERANCE, export_onnx, export_saved_model, parity
from training.job import TrainingJob
from training.models import build_model
from training.staging import MANIFEST

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """The ONNX export does not compute what the SavedModel computes."""


def train(job: TrainingJob) -> dict:
    """Train, export and upload; returns the metrics written to metrics.json."""
    keras.utils.set_random_seed(job.seed)
    manifest = json.loads(storage.read_text(join_uri(job.dataset_uri, MANIFEST)))
    labels: list[str] = manifest["classes"]
    started = time.monotonic()
    with storage.local_tree(job.dataset_uri) as data_dir:
        by_split = {
            split: [f for f in manifest["files"] if f["split"] == split] for split in ("train", "val")
        }
        train_ds = _dataset(data_dir, by_split["train"], labels, job, shuffle=True)
        val_ds = _dataset(data_dir, by_split["val"], labels, job, shuffle=False)
        model = build_model(job.architecture, job.image_size, len(labels))
        binary = len(labels) == 2
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=(
                keras.losses.BinaryCrossentropy(from_logits=True)
                if binary
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            ),
            metrics=[
                keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)
                if binary
                else keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
        )
        # shuffle=False: the tf.data pipeline already reshuffles every epoch.
        history = model.fit(train_ds, validation_data=val_ds, epochs=job.epochs, shuffle=False, verbose=2)
        parity_batch = next(iter(val_ds))[0].numpy()

    metrics = {
        "architecture": job.architecture,
        "image_size": job.image_size,
        "labels": labels,
        "epochs": job.epochs,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "train_seconds": round(time.monotonic() - started, 1),
        "dataset_digest": manifest["digest"],
    }
    with tempfile.TemporaryDirectory(prefix="dogs-cats-model-") as tmp:
        out = Path(tmp)
        export_saved_model(model, job.image_size, out / "saved_model")
        export_onnx(model, job.image_size, out / "model.onnx")
        difference = parity(out / "saved_model", out / "model.onnx", parity_batch)
        metrics["onnx_max_abs_difference"] = difference
        if difference > PARITY_TOLERANCE:
            raise ParityError(
                f"ONNX export differs from the SavedModel by {difference:.2e} "
                f"(tolerance {PARITY_TOLERANCE:.0e}); not publishing the model"
            )
        (out / "labels.txt").write_text("\n".join(labels) + "\n")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        storage.upload_tree(out, job.output_uri)
    log.info(
        "val_accuracy %.3f after %d epochs in %.0f s; model at %s",
        metrics["val_accuracy"],
        job.epochs,
        metrics["train_seconds"],
        job.output_uri,
    )
    return metrics


def _dataset(
    data_dir: Path, files: list[dict], labels: list[str], job: TrainingJob, *, shuffle: bool
) -> tf.data.Dataset:
    """uint8 image batches (what clients send) from the manifest's file list.

    Reading the manifest rather than scanning folders means stray files left by
    an interrupted staging run never leak into training.
    """
    if not files:
        raise ValueError(f"the staged split under {data_dir} is empty")
    paths = [str(data_dir / f["path"]) for f in files]
    indices = [labels.index(f["label"]) for f in files]
    targets = np.asarray(indices, np.float32)[:, None] if len(labels) == 2 else np.asarray(indices, np.int32)
    size = (job.image_size, job.image_size)

    def load(path: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, size)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), target

    dataset = tf.data.Dataset.from_tensor_slices((paths, targets))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=job.seed, reshuffle_each_iteration=True)
    return (
        dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(job.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
