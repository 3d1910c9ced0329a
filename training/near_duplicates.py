"""Near-duplicate photos (a resized, re-encoded or lightly cropped copy of one picture), found
by a perceptual hash so that the split keeps each group on one side: a copy in train and its
original in validation or test would score a memorised picture as generalisation.

The hash is imagehash's pHash (64 bits from the image's lowest frequencies). Where copies and
different photos fall in it is measured by `benchmarks/near_duplicates.py` (its table is in
benchmarks/README.md).
"""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

HASH_BITS = 64
# Within this many differing bits two photos are one picture: clear of the closest different
# photos measured (12 bits), and still joining resized, re-encoded and most lightly cropped copies.
NEAR_BITS = 8
# Two hashes within NEAR_BITS agree on at least one of NEAR_BITS + 1 bands (pigeonhole), so
# only photos sharing a band's value are compared: near-linear, not all pairs.
BANDS = NEAR_BITS + 1
_BITS_SET = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def perceptual_hash(pixels: np.ndarray) -> int:
    """The 64-bit pHash of a decoded RGB image."""
    # The staging extra's: training imports staging for its constants, and the training
    # image (no staging extra) must not need it.
    import imagehash

    return int(str(imagehash.phash(Image.fromarray(pixels))), 16)


def near_duplicate_groups(hashes: dict[str, int]) -> list[list[str]]:
    """The keys of `hashes` joined into groups (two or more each, sorted) where hashes chain
    within NEAR_BITS of each other; every other key stands alone and is not listed."""
    keys = sorted(hashes)
    values = np.array([hashes[key] for key in keys], dtype=np.uint64)
    parent = list(range(len(keys)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for start, width in _bands():
        band = (values >> np.uint64(start)) & np.uint64((1 << width) - 1)
        order = np.argsort(band, kind="stable")
        runs = np.split(order, np.flatnonzero(np.diff(band[order])) + 1)
        for members in (run for run in runs if len(run) > 1):
            for position, index in enumerate(members[:-1]):
                others = members[position + 1 :]
                for other in others[_distances(values[index], values[others]) <= NEAR_BITS]:
                    parent[root(int(other))] = root(int(index))
    groups: dict[int, list[str]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(root(index), []).append(key)
    return sorted(group for group in groups.values() if len(group) > 1)


def _bands() -> list[tuple[int, int]]:
    """(first bit, width) of BANDS bands covering the hash's bits."""
    edges = [round(band * HASH_BITS / BANDS) for band in range(BANDS + 1)]
    return [(low, high - low) for low, high in itertools.pairwise(edges)]


def _distances(value: np.uint64, others: np.ndarray) -> np.ndarray:
    """Differing bits between `value` and each of `others`."""
    differing = np.bitwise_xor(others, value).view(np.uint8).reshape(-1, 8)
    return _BITS_SET[differing].sum(axis=1)
