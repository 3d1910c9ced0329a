"""What each frozen ImageNet backbone's features tell cats from dogs, at each internal resolution.

    .venv/bin/python -m benchmarks.backbone_probe [--backbones efficientnet_lite0 ...]
        [--sizes 0 288] [--train-images 6000]

A linear probe: the whole petimages-180 staged as `benchmarks.train_accuracy` stages it, the
features of `--train-images` training images (one fixed random sample for every row) and of the
whole test split through each backbone with its ImageNet weights, the 180 px images resized to
each size inside the model (0: the backbone's own); then one Dense unit trained on the features
for a fixed number of epochs (Adam, no augmentation), nothing chosen on the test split; each row
is compared with the first on the same test images (McNemar's exact test). It asks
which backbone and resolution, at its compute cost, is a lever on accuracy; the extraction time
is what one frozen epoch costs per image. Prints one Markdown row per backbone and size.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import get_args

from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.metrics import discordant, mcnemar_p, wilson_interval
from core.settings import PretrainedChoice
from training.staging import StagingOptions, split_files, stage_dataset

PROBE_EPOCHS = 40


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--bucket", type=Path, default=Path(".bench/bucket"))
    parser.add_argument(
        "--backbones", nargs="+", choices=get_args(PretrainedChoice), default=get_args(PretrainedChoice)
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[0], help="0: the backbone's own")
    parser.add_argument("--train-images", type=int, default=6000)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    import keras
    import numpy as np

    from training.efficientnet import VARIANTS, pretrained_backbone
    from training.job import TrainingJob
    from training.train import make_dataset

    dataset = args.bucket.resolve() / "datasets" / "petimages"
    cache = args.bucket / "cache"
    manifest = stage_dataset(str(args.source), str(dataset), StagingOptions(), cache_dir=cache)
    labels = manifest["classes"]
    train = split_files(manifest, "train")
    splits = {
        "train": random.Random(0).sample(train, min(args.train_images, len(train))),
        "test": split_files(manifest, "test"),
    }
    job = TrainingJob(dataset_uri=str(dataset), output_uri=str(args.bucket / "unused"), batch_size=64)
    inputs = {split: make_dataset(dataset, files, labels, job) for split, files in splits.items()}
    targets = {split: np.concatenate([y.numpy() for _, y in batches]) for split, batches in inputs.items()}
    tested = len(splits["test"])
    print(
        "| backbone | internal size | extraction ms/img | probe test accuracy "
        f"({len(splits['train'])} train, {tested} test images) | 95% interval "
        "| vs the first row: images only it / only the first got right | McNemar p |"
    )
    print("|---|---|---|---|---|---|---|")
    rows, first_right = [], None
    for name, asked in ((name, size) for name in args.backbones for size in args.sizes):
        size = asked or VARIANTS[name].resolution
        backbone = keras.Sequential(pretrained_backbone(name, job.image_size, backbone_size=size))
        started = time.perf_counter()
        features = {split: backbone.predict(batches, verbose=0) for split, batches in inputs.items()}
        ms_per_image = (time.perf_counter() - started) * 1000 / sum(len(f) for f in features.values())
        keras.utils.set_random_seed(0)
        probe = keras.Sequential([keras.Input((features["train"].shape[1],)), keras.layers.Dense(1)])
        probe.compile(
            optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True)
        )
        probe.fit(features["train"], targets["train"], batch_size=64, epochs=PROBE_EPOCHS, verbose=0)
        right = (probe.predict(features["test"], verbose=0)[:, 0] > 0) == (targets["test"].reshape(-1) > 0.5)
        first_right = right if first_right is None else first_right
        accuracy, (only_this, only_first) = right.mean(), discordant(right, first_right)
        low, high = wilson_interval(int(right.sum()), tested)
        p_value = mcnemar_p(only_this, only_first)
        rows.append(
            {
                "backbone": name,
                "size": size,
                "ms_per_image": ms_per_image,
                "test_accuracy": accuracy,
                "mcnemar_p": p_value,
            }
        )
        print(
            f"| {name} | {size} | {ms_per_image:.1f} | {accuracy:.2%} | {low:.2%}-{high:.2%} "
            f"| {only_this} / {only_first} | {p_value:.3g} |",
            flush=True,
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
