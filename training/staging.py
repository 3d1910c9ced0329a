"""Stage 1: an image-folder dataset into the bucket, validated, de-duplicated, split.

The source is an http(s) zip or tar, a local folder or a gs:// prefix laid out
`class/*.jpg` (optionally below one parent folder, like the Kaggle zip's
`PetImages/`). Every file that is dropped is listed in the manifest with its
reason. Near-duplicates (resized, re-encoded, lightly cropped copies; see
near_duplicates.py) form groups, listed in the manifest, and the split is
decided by each group's first content hash, so a group stays on one side and
an image lands in the same split on every run. `manifest.json` is written last: its presence
means the dataset is complete, and a rerun with the same inputs reuses it
without copying anything; a run that crashed halfway resumes, skipping the
files already there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import storage
from core.images import MAX_IMAGE_PIXELS, ImageDecodeError, decode_rgb
from core.policy import AccessPolicy, access_policy
from core.settings import Environment, StagingParams, join_uri
from training.near_duplicates import near_duplicate_groups, perceptual_hash
from training.sources import DatasetError, local_source

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
UPLOAD_THREADS = 8  # object uploads are latency-bound: overlap them


class StagingOptions(StagingParams):
    """The run's staging choices, plus a pixel limit that only tests and operators change."""

    max_image_pixels: int = MAX_IMAGE_PIXELS


def read_manifest(dataset_uri: str) -> dict[str, Any]:
    """The manifest of the dataset staged at `dataset_uri` (a bucket URI or a local folder)."""
    return json.loads(storage.read_text(join_uri(dataset_uri, MANIFEST)))


def split_files(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The manifest's entries for one split, in the manifest's order."""
    if split not in SPLITS:
        raise ValueError(f"no split {split!r}: a manifest has {', '.join(SPLITS)}")
    return [entry for entry in manifest["files"] if entry["split"] == split]


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to the dataset root: <split>/<class>/<name>
    label: str
    split: str
    sha256: str


def stage_dataset(
    source: str,
    dataset_uri: str,
    options: StagingOptions,
    *,
    cache_dir: Path,
    policy: AccessPolicy | None = None,
) -> dict:
    """Stage `source` into `dataset_uri`; returns the manifest.

    Downloads are kept in `cache_dir`, so an interrupted one resumes. A download and its
    archive keep to `policy`, the deployment's (DOGS_CATS_*) unless given.
    """
    policy = policy or access_policy(Environment())
    params = options.model_dump()
    manifest_uri = join_uri(dataset_uri, MANIFEST)
    if storage.exists(manifest_uri):
        existing = read_manifest(dataset_uri)
        if existing.get("source") == source and existing.get("params") == params:
            log.info("dataset already staged at %s; reusing its manifest", dataset_uri)
            return existing
        raise DatasetError(
            f"{dataset_uri} already holds a dataset staged from {existing.get('source')!r} "
            f"with {existing.get('params')}; choose another dataset_name instead of overwriting it"
        )

    with local_source(source, cache_dir, policy, options.source_sha256) as (root, refused):
        class_dirs = _class_folders(root)
        selection = _select(class_dirs, options)
        _upload(selection.files, dataset_uri)

    files = [staged for staged, _ in selection.files]
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for f in files:
        counts[f.split][f.label] = counts[f.split].get(f.label, 0) + 1
    per_class = {label: sum(c.get(label, 0) for c in counts.values()) for label in sorted(class_dirs)}
    balance = round(min(per_class.values()) / max(per_class.values()), 4)
    dropped = refused + selection.dropped
    digest = hashlib.sha256("\n".join(f"{f.sha256} {f.split} {f.label}" for f in files).encode()).hexdigest()
    manifest = {
        "source": source,
        "params": params,
        "classes": sorted(class_dirs),
        "counts": counts,
        "balance": {"per_class": per_class, "min_to_max": balance},
        "duplicate_groups": selection.duplicate_groups,
        "near_duplicate_groups": selection.near_duplicate_groups,
        "dropped": dropped,
        "over_cap": selection.over_cap,
        "digest": digest,
        "files": [asdict(f) for f in files],
    }
    storage.write_text(manifest_uri, json.dumps(manifest, indent=1))
    if balance < 0.5:
        log.warning("classes are unbalanced: %s", per_class)
    log.info(
        "staged %d images (%s) into %s; dropped %d, %d duplicate groups, %d near-duplicate groups",
        len(files),
        {s: sum(c.values()) for s, c in counts.items()},
        dataset_uri,
        len(dropped),
        selection.duplicate_groups,
        len(selection.near_duplicate_groups),
    )
    return manifest


def split_of(sha256: str, val_fraction: float, test_fraction: float = 0.0) -> str:
    """Deterministic split from the content hash: stable across runs and machines.

    Reads the hash's last digits: the cap samples in hash order (leading
    digits), and the two must not correlate or a capped sample lands in one split.
    """
    position = int(sha256[-8:], 16) / 0x100000000
    if position < val_fraction:
        return "val"
    if position < val_fraction + test_fraction:
        return "test"
    return "train"


def examine(data: bytes, options: StagingOptions) -> str | int:
    """Why `data` is not kept as a training image, or, kept, its perceptual hash (from the one
    decode that checks it)."""
    if options.require_jfif and b"JFIF" not in data[:10]:
        return "no JFIF marker in the header"
    try:
        pixels = decode_rgb(data, max_pixels=options.max_image_pixels)
    except ImageDecodeError as exc:
        return str(exc)
    return perceptual_hash(pixels)


@dataclass
class _Selection:
    files: list[tuple[StagedFile, Path]]  # each kept file with the path it is copied from
    dropped: list[dict]
    over_cap: dict[str, int]
    duplicate_groups: int
    near_duplicate_groups: list[list[str]]  # each group's staged paths


def _select(class_dirs: dict[str, Path], options: StagingOptions) -> _Selection:
    """Hash every file, drop duplicates and rejected ones, apply the cap, group near-duplicates
    and split by group."""
    by_hash: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for label, folder in class_dirs.items():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            by_hash[hashlib.sha256(path.read_bytes()).hexdigest()].append((label, path))

    dropped: list[dict] = []
    candidates: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for digest, places in by_hash.items():
        labels = {label for label, _ in places}
        if len(labels) > 1:
            dropped += [
                {"file": str(p), "reason": f"same content in classes {sorted(labels)}"} for _, p in places
            ]
            continue
        keep, *copies = places
        dropped += [{"file": str(p), "reason": f"duplicate of {keep[1]}"} for _, p in copies]
        candidates[keep[0]].append((digest, keep[1]))

    kept: list[tuple[str, str, Path]] = []  # (label, digest, path)
    perceptual: dict[str, int] = {}  # digest -> perceptual hash
    over_cap: dict[str, int] = {}
    cap = options.max_images_per_class
    for label in sorted(class_dirs):
        kept_here = 0
        # Hash order is a fixed pseudo-random order: a capped sample is unbiased.
        ordered = sorted(candidates[label])
        for index, (digest, path) in enumerate(ordered):
            if cap and kept_here >= cap:
                over_cap[label] = len(ordered) - index
                break
            examined = examine(path.read_bytes(), options)
            if isinstance(examined, str):
                dropped.append({"file": str(path), "reason": examined})
                continue
            perceptual[digest] = examined
            kept.append((label, digest, path))
            kept_here += 1

    files, near_groups, ambiguous = _split_by_group(kept, perceptual, options)
    dropped += ambiguous
    for label in sorted(class_dirs):
        if not any(staged.label == label for staged, _ in files):
            raise DatasetError(f"class {label!r} has no usable images after validation")
    for split in ("train", "val"):
        if not any(staged.split == split for staged, _ in files):
            raise DatasetError(f"the {split} split is empty; stage more images")
    groups = sum(1 for places in by_hash.values() if len(places) > 1)
    return _Selection(files, dropped, over_cap, groups, near_groups)


def _split_by_group(
    kept: list[tuple[str, str, Path]], perceptual: dict[str, int], options: StagingOptions
) -> tuple[list[tuple[StagedFile, Path]], list[list[str]], list[dict]]:
    """(the staged files, each near-duplicate group's staged paths, the files dropped).

    A group takes its first digest's split, so near-duplicates land together. A group across
    classes is one picture under two labels, ambiguous as an exact copy is, and goes whole
    (the Kaggle set files a "photo unavailable" placeholder under both)."""
    where = {digest: (label, path) for label, digest, path in kept}
    split_key = {digest: digest for digest in where}
    groups, dropped = [], []
    for group in near_duplicate_groups(perceptual):
        labels = sorted({where[digest][0] for digest in group})
        if len(labels) > 1:
            reason = f"near-duplicate pictures in classes {labels}"
            dropped += [{"file": str(where[digest][1]), "reason": reason} for digest in group]
            for digest in group:
                del split_key[digest]
            continue
        groups.append(group)
        split_key.update(dict.fromkeys(group, group[0]))
    files: list[tuple[StagedFile, Path]] = []
    for label, digest, path in kept:
        if digest in split_key:
            split = split_of(split_key[digest], options.val_fraction, options.test_fraction)
            files.append((StagedFile(f"{split}/{label}/{path.name}", label, split, digest), path))
    staged_path = {staged.sha256: staged.path for staged, _ in files}
    return files, [[staged_path[digest] for digest in group] for group in groups], dropped


def _upload(selected: list[tuple[StagedFile, Path]], dataset_uri: str) -> None:
    """Copy the kept files in parallel; ones already there (a resumed run) are skipped."""
    present = set(storage.list_files(dataset_uri))
    missing = [
        (staged, path) for staged, path in selected if join_uri(dataset_uri, staged.path) not in present
    ]
    if len(missing) < len(selected):
        log.info("resuming: %d of %d files are already staged", len(selected) - len(missing), len(selected))

    def copy(item: tuple[StagedFile, Path]) -> None:
        staged, source_path = item
        storage.write_bytes(join_uri(dataset_uri, staged.path), source_path.read_bytes())

    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        list(pool.map(copy, missing))


def _class_folders(root: Path) -> dict[str, Path]:
    """Class name -> folder; descends through single wrapper folders like PetImages/."""
    folder = root
    while True:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
        if len(subdirs) == 1 and not any(p.is_file() for p in folder.iterdir()):
            folder = subdirs[0]
            continue
        break
    classes = {d.name: d for d in subdirs if _has_files(d)}
    if len(classes) < 2:
        found = ", ".join(f"{d.name}/" for d in subdirs) or "no sub-folders"
        raise DatasetError(
            f"need at least two class folders of images (class/*.jpg) in the source; found {found}"
        )
    return classes


def _has_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.rglob("*"))
