"""Accuracy the `small` model reaches on petimages-180 within a training budget on this machine.

    .venv/bin/python -m benchmarks.train_accuracy --image-size 112 --epochs 6

Stages the whole shared dataset (20% validation) into a local bucket under
.bench/, trains with the pipeline's own entrypoint, and prints one Markdown row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import get_args

from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.settings import ModelChoice, TrainingParams
from training.job import TrainingJob
from training.staging import StagingOptions, stage_dataset
from training.train import train

DEFAULTS = TrainingParams()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--bucket", type=Path, default=Path(".bench/bucket"))
    parser.add_argument("--model", default=DEFAULTS.model, choices=get_args(ModelChoice))
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    dataset = str(args.bucket.resolve() / "datasets" / "petimages")
    manifest = stage_dataset(str(args.source), dataset, StagingOptions(), cache_dir=args.bucket / "cache")
    output = args.bucket.resolve() / "models" / f"{args.model}-{args.image_size}-{int(time.time())}"
    job = TrainingJob(
        dataset_uri=dataset,
        output_uri=str(output),
        model=args.model,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    started = time.perf_counter()
    metrics = train(job)
    minutes = (time.perf_counter() - started) / 60
    train_images = sum(manifest["counts"]["train"].values())
    print(
        json.dumps({k: metrics[k] for k in ("val_accuracy", "epochs_trained", "best_epoch", "train_seconds")})
    )
    print("| model | image size | train images | epochs | wall minutes | val accuracy | ROC AUC |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.model} | {args.image_size} | {train_images} | {metrics['epochs_trained']} | {minutes:.1f} "
        f"| {metrics['evaluation']['accuracy']:.2%} | {metrics['evaluation']['roc_auc']:.3f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
