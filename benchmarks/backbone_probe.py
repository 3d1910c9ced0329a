"""What the frozen ImageNet backbone's features tell cats from dogs at each internal resolution.

    .venv/bin/python -m benchmarks.backbone_probe [--sizes 224 256 288] [--train-images 6000]

A linear probe: the whole petimages-180 staged as `benchmarks.train_accuracy` stages it, the
features of `--train-images` training images (one fixed random sample for every size) and of the
whole validation split through EfficientNet-Lite0 with its ImageNet weights, the 180 px images
resized to each size inside the model; then one Dense unit trained on the features (Adam, no
augmentation). It asks whether a larger internal resolution, at its compute cost, is a lever on
accuracy. Prints one Markdown row per size.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.constants import BACKBONE_SIZE
from training.staging import StagingOptions, stage_dataset

PROBE_EPOCHS = 40


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--bucket", type=Path, default=Path(".bench/bucket"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[BACKBONE_SIZE, 256, 288])
    parser.add_argument("--train-images", type=int, default=6000)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    import keras
    import numpy as np

    from training.efficientnet import pretrained_backbone
    from training.job import TrainingJob
    from training.pretrained import efficientnet_lite0_weights
    from training.train import make_dataset

    dataset = args.bucket.resolve() / "datasets" / "petimages"
    cache = args.bucket / "cache"
    manifest = stage_dataset(str(args.source), str(dataset), StagingOptions(), cache_dir=cache)
    labels = manifest["classes"]
    train = [f for f in manifest["files"] if f["split"] == "train"]
    splits = {
        "train": random.Random(0).sample(train, min(args.train_images, len(train))),
        "val": [f for f in manifest["files"] if f["split"] == "val"],
    }
    job = TrainingJob(dataset_uri=str(dataset), output_uri=str(args.bucket / "unused"), batch_size=64)
    inputs = {
        split: make_dataset(dataset, files, labels, job, training=False) for split, files in splits.items()
    }
    targets = {split: np.concatenate([y.numpy() for _, y in batches]) for split, batches in inputs.items()}
    weights = efficientnet_lite0_weights()
    print(
        f"| internal size | compute vs {BACKBONE_SIZE} | extraction img/s "
        f"| probe val accuracy ({len(splits['train'])} train, {len(splits['val'])} val images) |"
    )
    print("|---|---|---|---|")
    rows = []
    for size in args.sizes:
        backbone = pretrained_backbone(job.image_size, weights, backbone_size=size)
        started = time.perf_counter()
        features = {split: backbone.predict(batches, verbose=0) for split, batches in inputs.items()}
        per_second = sum(len(f) for f in features.values()) / (time.perf_counter() - started)
        keras.utils.set_random_seed(0)
        probe = keras.Sequential([keras.Input((features["train"].shape[1],)), keras.layers.Dense(1)])
        probe.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
        )
        probe.fit(features["train"], targets["train"], batch_size=64, epochs=PROBE_EPOCHS, verbose=0)
        _, accuracy = probe.evaluate(features["val"], targets["val"], verbose=0)
        rows.append({"size": size, "img_s": per_second, "val_accuracy": accuracy})
        compute = (size / BACKBONE_SIZE) ** 2
        print(f"| {size} | {compute:.2f}x | {per_second:.0f} | {accuracy:.2%} |", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
