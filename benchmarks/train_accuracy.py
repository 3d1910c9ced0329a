"""Accuracy a model reaches on the whole petimages-180 within a training budget on this machine.

    .venv/bin/python -m benchmarks.train_accuracy           # the default model: 1 head + 3 fine-tune epochs
    .venv/bin/python -m benchmarks.train_accuracy --model small --image-size 112 --epochs 6 \
        --fine-tune-epochs 0 --no-int8                       # the earlier small-model row

Stages the whole shared dataset (20% validation) into a local bucket under
.bench/, trains with the pipeline's own entrypoint, and prints one Markdown row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.settings import TrainingParams, add_arguments, options_from_namespace, options_of
from training.job import TrainingJob
from training.staging import StagingOptions, stage_dataset
from training.train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--bucket", type=Path, default=Path(".bench/bucket"))
    add_arguments(parser, TrainingParams)  # every training flag, with the settings' defaults
    parser.set_defaults(epochs=1, fine_tune_epochs=3)  # this benchmark's run: head, then fine-tuning
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    dataset = str(args.bucket.resolve() / "datasets" / "petimages")
    manifest = stage_dataset(str(args.source), dataset, StagingOptions(), cache_dir=args.bucket / "cache")
    output = args.bucket.resolve() / "models" / f"{args.model}-{args.image_size}-{int(time.time())}"
    job = options_of(
        TrainingJob,
        options_from_namespace(parser, TrainingParams, args),
        dataset_uri=dataset,
        output_uri=str(output),
    )
    started = time.perf_counter()
    metrics = train(job)
    minutes = (time.perf_counter() - started) / 60
    train_images = sum(manifest["counts"]["train"].values())
    history = metrics["history"]
    head_epochs = metrics["fine_tune_from"] or metrics["epochs_trained"]
    head_best = max(history["val_accuracy"][:head_epochs])
    summary = {
        k: metrics[k]
        for k in ("val_accuracy", "epochs_trained", "best_epoch", "fine_tune_from", "train_seconds")
    }
    print(
        json.dumps(
            {**summary, "head_best_val_accuracy": head_best, "val_accuracy_by_epoch": history["val_accuracy"]}
        )
    )
    print("| model | image size | train images | epochs (head + fine-tune) | fine-tuning | train minutes "
          "| wall minutes | val accuracy: head only | after fine-tuning (best epoch) | INT8 twin "
          "| ROC AUC |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    int8 = f"{metrics['int8']['val_accuracy']:.2%}" if "int8" in metrics else "-"
    print(
        f"| {job.model} | {job.image_size} (backbone {job.backbone_size}) | {train_images} "
        f"| {head_epochs} + {metrics['epochs_trained'] - head_epochs} "
        f"| top {job.fine_tune_blocks} blocks, {job.fine_tune_learning_rate:g} cosine "
        f"| {metrics['train_seconds'] / 60:.1f} | {minutes:.1f} | {head_best:.2%} "
        f"| {metrics['evaluation']['accuracy']:.2%} ({metrics['best_epoch']}) | {int8} "
        f"| {metrics['evaluation']['roc_auc']:.4f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
