"""Training images/s: our tf.data pipeline vs the Keras tutorial's, same model, same data, one run.

    .venv/bin/python -m benchmarks.train_throughput [--per-class 400] [--rounds 3] [--epochs 3]

The tutorial ("Image classification from scratch") reads with
`image_dataset_from_directory` and augments in a `Dataset.map`, feeding the whole model; ours
reads the manifest's file list and feeds the model's trainable part the frozen part's outputs
for each image and its augmented copy, computed once (`training.features`). Both train the same
`small` model, compiled the same way. Each round trains each pipeline for a few epochs in a
fresh interpreter of its own, the rounds interleaved and the order alternating; epoch 1
includes decoding (and for ours computing the views), later epochs show the steady state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from benchmarks.processes import in_clean_process
from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.settings import TrainingParams
from training.job import TrainingJob
from training.models import build_classifier
from training.staging import StagingOptions, read_manifest, split_files, stage_dataset
from training.train import compile_model, configure_devices, training_feed


class EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def tutorial_dataset(folder: Path, image_size: int, batch_size: int) -> tf.data.Dataset:
    """The tutorial's input pipeline, verbatim but for the uint8 cast our model's input wants."""
    dataset = keras.utils.image_dataset_from_directory(
        folder,
        image_size=(image_size, image_size),
        batch_size=batch_size,
        seed=TrainingJob.model_fields["seed"].default,
        label_mode="binary",
    )
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    dataset = dataset.map(
        lambda x, y: (tf.cast(tf.clip_by_value(augmentation(x), 0, 255), tf.uint8), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


PIPELINES = {
    "tutorial": "tutorial pipeline (image_dataset_from_directory)",
    "ours": "our pipeline (manifest, views computed once)",
}


def pipeline_rates(pipeline: str, dataset_uri: str, image_size: int, epochs: int) -> list[float]:
    """Images/s of each epoch of one pipeline feeding a fresh `small` model (run in a clean process)."""
    configure_devices()
    manifest = read_manifest(dataset_uri)
    train_files = split_files(manifest, "train")
    job = TrainingJob(model="small", dataset_uri=dataset_uri, output_uri="", image_size=image_size)
    classifier = build_classifier(job.model, image_size, len(manifest["classes"]))
    started = time.perf_counter()
    if pipeline == "tutorial":
        dataset = tutorial_dataset(Path(dataset_uri) / "train", image_size, job.batch_size)
        model = classifier.whole()
    else:
        dataset = training_feed(classifier.frozen, Path(dataset_uri), train_files, manifest["classes"], job)
        model = classifier.trainable
    before_fit = time.perf_counter() - started  # counted in epoch 1
    compile_model(model, len(manifest["classes"]) == 2, job.learning_rate, jit_compile=False)
    timer = EpochTimer()
    model.fit(dataset, epochs=epochs, callbacks=[timer], verbose=0)
    seconds = [timer.seconds[0] + before_fit, *timer.seconds[1:]]
    return [len(train_files) / second for second in seconds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--bucket", type=Path, default=Path(".bench/bucket"))
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=TrainingParams().image_size)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="per process: the first decodes")
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    dataset_uri = str(args.bucket.resolve() / "datasets" / f"throughput-{args.per_class}")
    manifest = stage_dataset(
        str(args.source),
        dataset_uri,
        StagingOptions(max_images_per_class=args.per_class, val_fraction=0.05),
        cache_dir=args.bucket / "cache",
    )
    run = {"dataset_uri": dataset_uri, "image_size": args.image_size, "epochs": args.epochs}
    rounds = []
    for number in range(args.rounds):
        order = list(PIPELINES) if number % 2 == 0 else list(reversed(PIPELINES))
        rates = {name: in_clean_process(pipeline_rates, pipeline=name, **run) for name in order}
        print(f"round {number + 1}: {json.dumps(rates)}", file=sys.stderr, flush=True)
        rounds.append(rates)
    images = len(split_files(manifest, "train"))
    print(f"\n{images} training images, {args.image_size} px, model small, {len(rounds)} rounds\n")
    print(
        "| pipeline | epoch 1 img/s (median, min-max) | later epochs img/s (median, min-max) "
        "| / tutorial, epoch 1 | / tutorial, later epochs |"
    )
    print("|---|---|---|---|---|")
    for name, title in PIPELINES.items():
        first = [rates[name][0] for rates in rounds]
        later = [statistics.median(rates[name][1:]) for rates in rounds]
        first_ratio = statistics.median(rates[name][0] / rates["tutorial"][0] for rates in rounds)
        later_ratio = statistics.median(
            statistics.median(rates[name][1:]) / statistics.median(rates["tutorial"][1:]) for rates in rounds
        )
        print(f"| {title} | {_spread(first)} | {_spread(later)} | {first_ratio:.2f} | {later_ratio:.2f} |")
    return 0


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


if __name__ == "__main__":
    sys.exit(main())
