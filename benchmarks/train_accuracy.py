"""Accuracy a model reaches on the whole petimages-180 within a training budget on this machine.

    .venv/bin/python -m benchmarks.train_accuracy --seeds 1 2 3   # the default model, three seeds
    .venv/bin/python -m benchmarks.train_accuracy --max-images-per-class 500 --seeds 1 2 3  # make demo's size

Stages the shared dataset (the defaults: 20% validation, 10% test) into a local bucket under
.bench/, trains with the pipeline's own entrypoint once per seed, each seed in a fresh process,
and prints one Markdown row per seed: the test split's figures (scored once, after validation
chose the epoch) with their 95% interval, and validation's beside them. Compare two
configurations only on a difference larger than the seeds' spread and the intervals.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.settings import TrainingParams, add_arguments, options_from_namespace, options_of
from training.job import TrainingJob
from training.staging import StagingOptions, stage_dataset
from training.train import train

HEADER = (
    "| model | seed | train images | test images | epochs (head + fine-tune) | train minutes "
    "| val accuracy (best epoch) | test accuracy (95% interval) | log-loss | ROC AUC | ECE "
    "| INT8 test accuracy, agreement | INT8 served |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--bucket", type=Path, default=Path(".bench/bucket"))
    parser.add_argument("--max-images-per-class", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)  # set for each seed's process
    add_arguments(parser, TrainingParams)  # every training flag, with the settings' defaults
    parser.set_defaults(epochs=1, fine_tune_epochs=3)  # this benchmark's run: head, then fine-tuning
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    if args.one_seed is None:
        print(HEADER, flush=True)
        for seed in args.seeds:  # a fresh process per seed: no TensorFlow state carried over
            given = sys.argv[1:] if argv is None else argv
            command = [sys.executable, "-m", "benchmarks.train_accuracy", *given, "--one-seed", str(seed)]
            subprocess.run(command, check=True)
        return 0
    options = StagingOptions(max_images_per_class=args.max_images_per_class)
    dataset = str(args.bucket.resolve() / "datasets" / f"petimages-{args.max_images_per_class or 'all'}")
    manifest = stage_dataset(str(args.source), dataset, options, cache_dir=args.bucket / "cache")
    seed = args.one_seed
    output = args.bucket.resolve() / "models" / f"{args.model}-{args.image_size}-{seed}-{int(time.time())}"
    job = options_of(
        TrainingJob,
        options_from_namespace(parser, TrainingParams, args),
        dataset_uri=dataset,
        output_uri=str(output),
        seed=seed,
    )
    metrics = train(job)
    counts = manifest["counts"]
    test = metrics["test"]
    low, high = test["accuracy_95ci"]
    twin = metrics.get("int8")
    int8 = f"{twin['test_accuracy']:.2%}, {twin['agreement']:.2%}" if twin else "-"
    print(
        f"| {job.model} | {seed} | {sum(counts['train'].values())} | {test['examples']} "
        f"| {recipe_cells(metrics)} "
        f"| {metrics['val_accuracy']:.2%} ({metrics['best_epoch']}) "
        f"| **{test['accuracy']:.2%}** ({low:.2%}-{high:.2%}) | {test['log_loss']:.4f} "
        f"| {test['roc_auc']:.4f} | {test['calibration']['ece']:.4f} | {int8} "
        f"| {'yes' if twin and twin['serve'] else 'no'} |",
        flush=True,
    )
    return 0


def recipe_cells(metrics: dict[str, Any]) -> str:
    """A trained model's `epochs (head + fine-tune) | train minutes` cells, from its metrics.json."""
    head_epochs = metrics["fine_tune_from"] or metrics["epochs_trained"]
    return f"{head_epochs} + {metrics['epochs_trained'] - head_epochs} | {metrics['train_seconds'] / 60:.1f}"


if __name__ == "__main__":
    sys.exit(main())
