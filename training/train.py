"""Stage 2: train on a staged dataset and write the model folder.

`{output_uri}/` receives `saved_model/` (the artifact of record), `model.onnx`,
`labels.txt`, `metrics.json`, `model_card.json`, the charts, and
`checkpoints/` (one per epoch, for resuming). The same function runs as a
local process or in a GPU pod; a rerun after a crash resumes from the last
completed epoch, and a rerun after success only re-exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core import storage
from core.constants import INPUT_NAME, INT8_MODEL_FILE, LABELS_FILE, MODEL_NAME, OUTPUT_NAME
from core.errors import ProjectError
from core.images import ImageDecodeError, decode_rgb
from core.metrics import classification_metrics
from core.settings import join_uri
from training.checkpoints import BucketCheckpoint
from training.efficientnet import unfreeze_top
from training.evaluate import save_charts
from training.export import (
    PARITY_TOLERANCE,
    export_onnx,
    export_saved_model,
    parity,
    probabilities_function,
)
from training.features import frozen_outputs, training_views, view_batches
from training.job import TrainingJob
from training.models import build_classifier
from training.quantize import calibration_sample, int8_verdict, onnx_probabilities, quantize_int8
from training.staging import SPLITS, read_manifest, split_files

log = logging.getLogger(__name__)


class ParityError(ProjectError, RuntimeError):
    """The ONNX export does not compute what the SavedModel computes."""


class TrainingDataError(ProjectError, ValueError):
    """The staged splits cannot train a classifier; the message says why."""


def train(job: TrainingJob) -> dict[str, Any]:
    """Train (or resume), evaluate, export and upload; returns metrics.json's content."""
    on_gpu = configure_devices()
    keras.utils.set_random_seed(job.seed)
    manifest = read_manifest(job.dataset_uri)
    labels: list[str] = manifest["classes"]
    splits = {split: split_files(manifest, split) for split in SPLITS}
    check_splits(splits, labels)
    weights = class_weights(splits["train"], labels)
    started = time.monotonic()
    checkpoints = BucketCheckpoint(
        join_uri(job.output_uri, "checkpoints"), early_stopping_patience=job.early_stopping_patience
    )

    with (
        storage.local_tree(job.dataset_uri) as data_dir,
        tempfile.TemporaryDirectory(prefix="dogs-cats-model-") as tmp,
    ):
        val_ds = make_dataset(data_dir, splits["val"], labels, job)
        classifier = build_classifier(
            job.model, job.image_size, len(labels), backbone_size=job.backbone_size, top_blocks=job.top_blocks
        )
        if (resumed := checkpoints.resume()) is not None:
            classifier = dataclasses.replace(classifier, trainable=resumed)
        else:
            compile_model(classifier.trainable, len(labels) == 2, job.learning_rate, on_gpu)
        model = classifier.trainable
        steps_per_epoch = math.ceil(len(splits["train"]) / job.batch_size)
        head_epochs = job.head_epochs(steps_per_epoch)
        sized = "" if job.epochs else " (epochs 0: sized from the training set)"
        log.info("%d epochs of %d steps%s", head_epochs, steps_per_epoch, sized)

        @functools.cache
        def feeds() -> tuple[tf.data.Dataset, tf.data.Dataset]:
            """Computed on first use: a rerun after success trains nothing."""
            val_outputs = frozen_outputs(classifier.frozen, val_ds, len(splits["val"]))
            return (
                training_feed(classifier.frozen, data_dir, splits["train"], labels, job),
                view_batches([val_outputs], _targets(val_ds), job.batch_size),
            )

        def fit_until(epochs: int) -> None:
            completed = checkpoints.state["completed_epochs"]
            if checkpoints.finished or completed >= epochs:
                log.info("training already finished (%d epochs)", completed)
                return
            train_feed, val_feed = feeds()
            model.fit(
                train_feed,
                validation_data=val_feed,
                epochs=epochs,
                initial_epoch=completed,
                callbacks=[checkpoints],
                class_weight=weights,
                shuffle=False,  # view_batches already reshuffles every epoch
                verbose=2,
            )

        with _staged_images_decode():
            if not checkpoints.fine_tuning:
                fit_until(head_epochs)
            if job.fine_tune_epochs and not checkpoints.fine_tuning:
                checkpoints.start_fine_tuning()
                start_fine_tuning(model, job, steps_per_epoch, on_gpu)
            if checkpoints.fine_tuning:  # a resumed model is already unfrozen and recompiled
                # Its optimizer goes on from its step count and moments, on this run's schedule.
                model.optimizer.learning_rate = fine_tune_schedule(job, steps_per_epoch)
                fit_until(checkpoints.state["fine_tune_from"] + job.fine_tune_epochs)
            checkpoints.restore_best(model)
            whole = classifier.whole()
            y_val = _targets(val_ds)
            validation = classification_metrics(y_val, _probabilities(whole, val_ds, job.image_size), labels)
            parity_batch = next(iter(val_ds))[0].numpy()

        metrics: dict[str, Any] = {
            "model": job.model,
            "image_size": job.image_size,
            "labels": labels,
            "epochs_trained": checkpoints.state["completed_epochs"],
            "fine_tune_from": checkpoints.state["fine_tune_from"],
            "best_epoch": checkpoints.state["best_epoch"],
            "stopped_early": checkpoints.state["stopped_early"],
            "history": checkpoints.state["history"],
            "val_accuracy": validation["accuracy"],
            "validation": validation,
            "class_weights": weights,
            "device": "gpu" if on_gpu else "cpu",
            "train_seconds": round(time.monotonic() - started, 1),
            "dataset_digest": manifest["digest"],
        }
        out = Path(tmp)
        export_saved_model(whole, job.image_size, out / "saved_model")
        export_onnx(whole, job.image_size, out / "model.onnx")
        difference = parity(out / "saved_model", out / "model.onnx", parity_batch)
        metrics["onnx_max_abs_difference"] = difference
        if difference > PARITY_TOLERANCE:
            raise ParityError(
                f"ONNX export differs from the SavedModel by {difference:.2e} "
                f"(tolerance {PARITY_TOLERANCE:.0e}); not publishing the model"
            )
        # Scored once, after every choice is made: the exported model, through the client's decode.
        test_ds = make_dataset(data_dir, splits["test"], labels, job)
        with _staged_images_decode():
            y_test = _targets(test_ds)
            fp32_test = onnx_probabilities(out / "model.onnx", (images.numpy() for images, _ in test_ds))
        test = classification_metrics(y_test, fp32_test, labels)
        metrics["test_accuracy"] = test["accuracy"]
        metrics["test"] = test
        if job.int8:
            calibration = make_dataset(data_dir, calibration_sample(splits["train"]), labels, job)
            metrics["int8"] = int8_twin(out, calibration, test_ds, y_test, fp32_test, labels)
        save_charts(metrics["history"], test, out)
        (out / LABELS_FILE).write_text("\n".join(labels) + "\n")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "model_card.json").write_text(json.dumps(model_card(job, manifest, metrics), indent=2))
        storage.upload_tree(out, job.output_uri)
    low, high = test["accuracy_95ci"]
    log.info(
        "test accuracy %.2f%% (95%% interval %.2f-%.2f%%, %d images), log-loss %.3f, ROC AUC %.3f, "
        "ECE %.3f; validation accuracy %.2f%% after %d epochs (best %d) in %.0f s; model at %s",
        100 * test["accuracy"], 100 * low, 100 * high, test["examples"], test["log_loss"],
        test["roc_auc"], test["calibration"]["ece"], 100 * validation["accuracy"],
        metrics["epochs_trained"], metrics["best_epoch"], metrics["train_seconds"], job.output_uri,
    )  # fmt: skip
    return metrics


@contextlib.contextmanager
def _staged_images_decode() -> Iterator[None]:
    """A staged file that no longer decodes reaches TensorFlow's loops as an
    InvalidArgumentError: say which, and what to do."""
    try:
        yield
    except tf.errors.InvalidArgumentError as exc:
        first = exc.message.splitlines()[0]
        detail = first.partition(f"{ImageDecodeError.__name__}: ")[2] or first
        raise TrainingDataError(
            f"a staged image could not be decoded ({detail}); restage the dataset"
        ) from exc


def _targets(dataset: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([np.asarray(y).reshape(-1) for _, y in dataset]).astype(int)


def int8_twin(
    out: Path,
    calibration: tf.data.Dataset,
    test_ds: tf.data.Dataset,
    y_test: np.ndarray,
    fp32_probabilities: np.ndarray,
    labels: list[str],
) -> dict[str, Any]:
    """Quantize model.onnx, score the twin on the test split beside the FP32 model, and say
    whether it may be served in FP32's place (`int8_verdict`)."""
    started = time.monotonic()
    quantize_int8(out / "model.onnx", out / INT8_MODEL_FILE, (images.numpy() for images, _ in calibration))
    probabilities = onnx_probabilities(out / INT8_MODEL_FILE, (images.numpy() for images, _ in test_ds))
    evaluation = classification_metrics(y_test, probabilities, labels)
    verdict = int8_verdict(y_test, fp32_probabilities, probabilities)
    log.info("INT8 twin: test accuracy %.2f%%; %s", 100 * evaluation["accuracy"], verdict["why"])
    return {
        "file": INT8_MODEL_FILE,
        "test_accuracy": evaluation["accuracy"],
        "test": evaluation,
        **verdict,
        "quantize_seconds": round(time.monotonic() - started, 1),
    }


def configure_devices() -> bool:
    """Mixed precision on a GPU (its tensor cores want float16); on a CPU, one
    thread per core for ops and two ops at a time. Returns whether a GPU is used."""
    if tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
        return True
    cores = len(os.sched_getaffinity(0))  # the CPUs this process may use, not the host's
    with contextlib.suppress(RuntimeError):  # TensorFlow already started in this process: keep it
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    return False


def check_splits(splits: dict[str, list[dict]], labels: list[str]) -> None:
    if len(labels) < 2:
        raise TrainingDataError(f"need at least two classes, the manifest has {labels}")
    for split, files in splits.items():
        if not files:
            raise TrainingDataError(
                f"the {split} split is empty: stage more images or raise {split}_fraction"
                if split != "train"
                else "the train split is empty: stage more images or lower val_fraction and test_fraction"
            )
        missing = sorted(set(labels) - {f["label"] for f in files})
        if missing:
            raise TrainingDataError(
                f"the {split} split has no images of class {', '.join(missing)}: stage more images"
            )


def class_weights(files: list[dict], labels: list[str]) -> dict[int, float]:
    """Balanced weights (n / (classes * count)): every class weighs the same in the loss."""
    counts = [sum(1 for f in files if f["label"] == label) for label in labels]
    return {index: round(len(files) / (len(labels) * count), 4) for index, count in enumerate(counts)}


def make_dataset(data_dir: Path, files: list[dict], labels: list[str], job: TrainingJob) -> tf.data.Dataset:
    """uint8 image batches (what clients send) from the manifest's file list, in its order.

    Reading the manifest rather than scanning folders means stray files left by
    an interrupted staging run never leak in. Decoded images are cached in memory.
    """
    paths = [str(data_dir / f["path"]) for f in files]
    indices = [labels.index(f["label"]) for f in files]
    binary = len(labels) == 2
    targets = np.asarray(indices, np.float32)[:, None] if binary else np.asarray(indices, np.int32)
    size = (job.image_size, job.image_size)

    def load(path: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # The client's and the server's decode (core.images), not TensorFlow's: one preprocessing.
        image = tf.numpy_function(_decoded_file, [path, job.image_size], tf.uint8, stateful=False)
        image.set_shape((*size, 3))
        return image, target

    dataset = tf.data.Dataset.from_tensor_slices((paths, targets))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
    return dataset.batch(job.batch_size).prefetch(tf.data.AUTOTUNE)


def training_feed(
    frozen: keras.Model, data_dir: Path, files: list[dict], labels: list[str], job: TrainingJob
) -> tf.data.Dataset:
    """Batches of the frozen part's outputs for the training images and their augmented
    copies, one view per image drawn each epoch (`training.features`)."""
    images = make_dataset(data_dir, files, labels, job)
    views = training_views(frozen, images, len(files), job.augmented_copies, job.seed)
    return view_batches(views, _targets(images), job.batch_size, seed=job.seed)


def _decoded_file(path: bytes, image_size: int) -> np.ndarray:
    try:
        return decode_rgb(Path(path.decode()).read_bytes(), int(image_size))
    except (ImageDecodeError, OSError) as exc:  # reaches fit() as an InvalidArgumentError
        raise ImageDecodeError(f"{path.decode()}: {exc}") from exc


def start_fine_tuning(model: keras.Model, job: TrainingJob, steps_per_epoch: int, jit_compile: bool) -> None:
    """Unfreeze the backbone's top blocks and recompile at the low rate (a fresh optimizer:
    Adam's moments from the head phase do not fit the new variables)."""
    unfreeze_top(model.get_layer(f"{job.model}_top"))
    compile_model(model, model.output_shape[-1] == 1, fine_tune_schedule(job, steps_per_epoch), jit_compile)
    log.info(
        "fine-tuning the top %d blocks, learning rate %g falling to 0 over %d epochs",
        job.fine_tune_blocks, job.fine_tune_learning_rate, job.fine_tune_epochs,
    )  # fmt: skip


def fine_tune_schedule(job: TrainingJob, steps_per_epoch: int) -> keras.optimizers.schedules.CosineDecay:
    """fine_tune_learning_rate falling to zero along a cosine over the fine-tuning steps (at a
    constant 1e-4, the epochs after the first lost accuracy on the whole dataset). It follows
    the optimizer's step count, which a resumed run restores."""
    return keras.optimizers.schedules.CosineDecay(
        job.fine_tune_learning_rate, decay_steps=max(job.fine_tune_epochs * steps_per_epoch, 1)
    )


def compile_model(
    model: keras.Model,
    binary: bool,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    jit_compile: bool,
) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
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
        jit_compile=jit_compile,  # XLA fuses the convolutions on a GPU; on a CPU it was slower here
    )


def _probabilities(model: keras.Model, dataset: tf.data.Dataset, image_size: int) -> np.ndarray:
    """Probabilities through the very function that is exported."""
    serve = probabilities_function(model, image_size)
    return np.concatenate([serve(x)[OUTPUT_NAME].numpy() for x, _ in dataset])


def model_card(job: TrainingJob, manifest: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer needs to trust or reproduce the model."""
    test = metrics["test"]
    import onnx
    import onnxruntime
    import tf2onnx

    return {
        "model": f"{MODEL_NAME} {job.model}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": {INPUT_NAME: f"uint8 [N, {job.image_size}, {job.image_size}, 3] RGB"},
        "outputs": {OUTPUT_NAME: f"float32 [N, {len(metrics['labels'])}] in {LABELS_FILE} order"},
        "labels": metrics["labels"],
        "dataset": {
            "uri": job.dataset_uri,
            "source": manifest["source"],
            "digest": manifest["digest"],
            "counts": manifest["counts"],
        },
        "params": job.model_dump(),
        "metrics": {
            "test": {  # scored once, on the exported model.onnx, after every choice was made
                key: test[key]
                for key in ("examples", "accuracy", "accuracy_95ci", "log_loss", "roc_auc", "per_class")
            }
            | {"ece": test["calibration"]["ece"], "confusion_matrix": test["confusion_matrix"]},
            "val_accuracy": metrics["val_accuracy"],  # the split that chose the epoch: it flatters
            "epochs_trained": metrics["epochs_trained"],
            "onnx_max_abs_difference": metrics["onnx_max_abs_difference"],
        },
        "int8": {key: metrics["int8"][key] for key in ("test_accuracy", "agreement", "serve", "why")}
        if "int8" in metrics
        else "not exported (int8 false)",
        "versions": {
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "git_commit": git_commit(),
    }


def git_commit() -> str:
    """The code's commit: baked into images as DOGS_CATS_GIT_COMMIT, else asked of git."""
    if commit := os.environ.get("DOGS_CATS_GIT_COMMIT"):
        return commit
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"
