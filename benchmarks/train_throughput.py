"""Training images/s: our tf.data pipeline vs the Keras tutorial's, same model, same data, one run.

    .venv/bin/python -m benchmarks.train_throughput [--per-class 800] [--image-size 180]

The tutorial ("Image classification from scratch") reads with
`image_dataset_from_directory` and augments in a `Dataset.map`; ours reads the
manifest's file list, caches decoded images in memory and augments after the
cache. Both feed the same `small` model, compiled the same way; epoch 1 includes
decoding (and our cache fill), later epochs show the steady state.
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

from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.settings import TrainingParams
from training.job import TrainingJob
from training.staging import StagingOptions, split_files, stage_dataset
from training.train import compiled_model, configure_devices, make_dataset


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


def _interleaved(datasets: dict[str, tf.data.Dataset], job: TrainingJob, images: int, rounds: int) -> dict:
    """One epoch of each pipeline in turn, `rounds` times: drift in the machine's
    speed (other tenants, clocks) hits both alike instead of one."""
    models = {name: compiled_model(job, ["Cat", "Dog"], jit_compile=False) for name in datasets}
    timers = {name: EpochTimer() for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            models[name].fit(dataset, epochs=1, callbacks=[timers[name]], verbose=0)
    return {name: [images / s for s in timer.seconds] for name, timer in timers.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--bucket", type=Path, default=Path(".bench/bucket"))
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=TrainingParams().image_size)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    configure_devices()
    dataset_uri = str(args.bucket.resolve() / "datasets" / f"throughput-{args.per_class}")
    manifest = stage_dataset(
        str(args.source),
        dataset_uri,
        StagingOptions(max_images_per_class=args.per_class, val_fraction=0.05),
        cache_dir=args.bucket / "cache",
    )
    train_files = split_files(manifest, "train")
    job = TrainingJob(model="small", dataset_uri=dataset_uri, output_uri="", image_size=args.image_size)
    ours = make_dataset(Path(dataset_uri), train_files, manifest["classes"], job, training=True)
    tutorial = tutorial_dataset(Path(dataset_uri) / "train", args.image_size, job.batch_size)
    tutorial_name = "tutorial pipeline (image_dataset_from_directory)"
    datasets = {tutorial_name: tutorial, "our pipeline (manifest, cache, augment after cache)": ours}
    results = _interleaved(datasets, job, len(train_files), args.rounds)
    print(json.dumps(results))
    baseline = statistics.median(results[tutorial_name][1:])
    print(
        f"\n{len(train_files)} training images, {args.image_size} px, model small, batch {job.batch_size}\n"
    )
    print("| pipeline | epoch 1 img/s | later epochs img/s (median, min-max) | ratio vs tutorial |")
    print("|---|---|---|---|")
    for name, rates in results.items():
        later = rates[1:]
        median = statistics.median(later)
        print(
            f"| {name} | {rates[0]:.1f} | {median:.1f} ({min(later):.1f}-{max(later):.1f}) "
            f"| {median / baseline:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
