"""Where near-duplicates end: pHash distances of copies against distances between different
photos, on the shared PetImages-180 folder, and the groups the staging threshold finds.

    .venv/bin/python -m benchmarks.near_duplicates [--source ../shared/datasets/petimages-180] [--sample 1500]

Prints Markdown tables for benchmarks/README.md: for each kind of copy (made here from a
seeded sample of the photos) the differing bits from its original, for every pair of
different photos in the sample the same, and, over the whole folder, the groups
`training.near_duplicates` forms at its threshold (NEAR_BITS).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.images import ImageDecodeError, decode_rgb
from training.near_duplicates import NEAR_BITS, near_duplicate_groups, perceptual_hash


def _reencoded(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=50)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _cropped(share: float) -> Callable[[Image.Image], Image.Image]:
    def crop(image: Image.Image) -> Image.Image:
        width, height = image.size
        x, y = round(width * share), round(height * share)
        return image.crop((x, y, width - x, height - y))

    return crop


COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resized to half": lambda image: image.resize((image.width // 2, image.height // 2)),
    "re-encoded, JPEG quality 50": _reencoded,
    "cropped 2% a side": _cropped(0.02),
    "cropped 3% a side": _cropped(0.03),
    "cropped 5% a side": _cropped(0.05),
}


def _hash(image: Image.Image) -> int:
    return perceptual_hash(np.asarray(image.convert("RGB")))


def _row(name: str, distances: np.ndarray) -> str:
    within = (distances <= NEAR_BITS).mean()
    return (
        f"| {name} | {len(distances):,} | {distances.min()} | {np.median(distances):.0f} "
        f"| {np.percentile(distances, 95):.0f} | {distances.max()} | {within:.1%} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--sample", type=int, default=1500)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    photos = sorted(args.source.glob("*/*.jpg"))
    sample = random.Random(0).sample(photos, args.sample)
    originals = {path: Image.open(path).convert("RGB") for path in sample}
    hashes = np.array([_hash(image) for image in originals.values()], dtype=np.uint64)
    print(f"source: {args.source}; {args.sample} photos sampled (seed 0); threshold {NEAR_BITS} bits\n")
    print("| pair | pairs | min | median | p95 | max | within the threshold |")
    print("|---|---|---|---|---|---|---|")
    for name, copy in COPIES.items():
        distances = [
            (original ^ _hash(copy(image))).bit_count()
            for original, image in zip(hashes.tolist(), originals.values(), strict=True)
        ]
        print(_row(f"a photo and its copy, {name}", np.array(distances)))
    different = np.concatenate(
        [
            np.unpackbits(
                np.bitwise_xor(hashes[i + 1 :], hashes[i]).view(np.uint8).reshape(-1, 8), axis=1
            ).sum(1)
            for i in range(len(hashes) - 1)
        ]
    )
    print(_row("two different photos", different))

    started = time.perf_counter()
    perceptual, labels = {}, {}
    for path in photos:
        data = path.read_bytes()
        try:
            pixels = decode_rgb(data)
        except ImageDecodeError:
            continue
        digest = hashlib.sha256(data).hexdigest()
        perceptual[digest], labels[digest] = perceptual_hash(pixels), path.parent.name
    hashed = time.perf_counter() - started
    groups = near_duplicate_groups(perceptual)
    grouped = time.perf_counter() - started - hashed
    across = sum(1 for group in groups if len({labels[digest] for digest in group}) > 1)
    sizes = sorted({len(group) for group in groups})
    print("\n| photos hashed | hashing s | grouping s | groups | sizes | across classes |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(perceptual):,} | {hashed:.1f} | {grouped:.1f} | {len(groups)} | {sizes} | {across} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
