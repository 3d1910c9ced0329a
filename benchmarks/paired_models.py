"""Trained models compared on the same test images: accuracy, interval and McNemar's paired test.

    .venv/bin/python -m benchmarks.paired_models .bench/bucket/models/RUN_A .bench/bucket/models/RUN_B ...

Each folder is a model folder `training.train` wrote (a `benchmarks.train_accuracy` run), all
trained on one staged dataset. Each `model.onnx` is scored on that dataset's test split through
the client's decode, the way training scored it once; a model that does not get training's own
figure again stops the script. Each row is then compared with the first on the same images:
two runs' intervals overlap long before their difference is noise, and the paired test says
which. It chooses nothing.

`--test-dataset` scores them instead on another staged dataset's test split, less every image
the models' own dataset trained or validated on, or a near-duplicate of one: models trained at
`make demo`'s size (`--max-images-per-class 500`) scored on the whole dataset's test images
give the demo's recipe an interval a few tenths wide instead of several points. With
`--split val` they are scored on that dataset's validation split instead (less the same
images): where a recipe is chosen, so that the test split is only read to report the choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.train_accuracy import recipe_cells
from core.metrics import discordant, mcnemar_p, wilson_interval
from training.staging import read_manifest, split_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", type=Path, nargs="+", help="model folders, the first the reference")
    parser.add_argument("--test-dataset", type=Path, help="a staged dataset whose test split to score on")
    parser.add_argument(
        "--split", choices=("test", "val"), default="test", help="--test-dataset's split to score on"
    )
    args = parser.parse_args(argv)
    if args.split != "test" and not args.test_dataset:
        parser.error("--split val needs --test-dataset: the models chose their epoch on their own")
    cards = [json.loads((folder / "model_card.json").read_text()) for folder in args.models]
    digests = {card["dataset"]["digest"] for card in cards}
    if len(digests) != 1:
        parser.error(f"the models were trained on {len(digests)} different datasets; pair them on one")
    import numpy as np

    from training.job import TrainingJob
    from training.quantize import onnx_probabilities
    from training.train import make_dataset

    dataset = Path(cards[0]["dataset"]["uri"])
    manifest = read_manifest(str(dataset))
    labels = manifest["classes"]
    scored = split_files(manifest, "test")
    if args.test_dataset:
        other = read_manifest(str(args.test_dataset))
        if other["classes"] != labels:
            parser.error(f"{args.test_dataset} has classes {other['classes']}, the models {labels}")
        seen = {entry["sha256"] for split in ("train", "val") for entry in split_files(manifest, split)}
        scored = unseen_files(other, args.split, seen)
        left_out = len(split_files(other, args.split)) - len(scored)
        print(f"{args.test_dataset}: {len(scored)} {args.split} images; {left_out} left out as seen\n")
        dataset = args.test_dataset
    print(
        "| model folder | model | epochs (head + fine-tune) | train minutes "
        f"| {args.split} accuracy ({len(scored)} images) | 95% interval "
        "| vs the first row: images only it / only the first got right | McNemar p |"
    )
    print("|---|---|---|---|---|---|---|---|")
    first_right = None
    for folder in args.models:
        metrics = json.loads((folder / "metrics.json").read_text())
        job = TrainingJob(dataset_uri=str(dataset), output_uri=str(folder), image_size=metrics["image_size"])
        batches = make_dataset(dataset, scored, labels, job)
        targets = np.concatenate([y.numpy() for _, y in batches]).reshape(-1)
        probabilities = onnx_probabilities(folder / "model.onnx", (x.numpy() for x, _ in batches))
        right = probabilities.argmax(axis=1) == targets.astype(int)
        accuracy = round(float(right.mean()), 4)
        if not args.test_dataset and accuracy != metrics["test_accuracy"]:
            print(f"{folder}: scores {accuracy:.2%} here, {metrics['test_accuracy']:.2%} in training")
            return 1
        first_right = right if first_right is None else first_right
        only_this, only_first = discordant(right, first_right)
        low, high = wilson_interval(int(right.sum()), len(right))
        print(
            f"| {folder.name} | {metrics['model']} | {recipe_cells(metrics)} "
            f"| {accuracy:.2%} | {low:.2%}-{high:.2%} "
            f"| {only_this} / {only_first} | {mcnemar_p(only_this, only_first):.3g} |",
            flush=True,
        )
    return 0


def unseen_files(manifest: dict[str, Any], split: str, seen: set[str]) -> list[dict[str, Any]]:
    """`manifest`'s entries in `split` whose content, and every near-duplicate's, is not in `seen`."""
    sha256_of = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    tainted = set(seen)
    for group in manifest["near_duplicate_groups"]:
        hashes = {sha256_of[path] for path in group}
        if hashes & seen:
            tainted |= hashes
    return [entry for entry in split_files(manifest, split) if entry["sha256"] not in tainted]


if __name__ == "__main__":
    sys.exit(main())
