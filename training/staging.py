"""Stage 1: an image-folder dataset into the bucket, validated, de-duplicated, split.

The source is an http(s) zip, a local folder or a gs:// prefix laid out
`class/*.jpg` (optionally below one parent folder, like the Kaggle zip's
`PetImages/`). The split is decided by each image's content hash, so an image
lands in the same split on every run. `manifest.json` is written last: its
presence means the dataset is complete, and a rerun with the same inputs
reuses it without copying anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import storage
from pipeline.images import ImageDecodeError, decode_rgb
from pipeline.settings import join_uri

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


class DatasetError(ValueError):
    """The source cannot become a dataset; the message says what was found."""


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to the dataset root: <split>/<class>/<name>
    label: str
    split: str
    sha256: str


def stage_dataset(
    source: str,
    dataset_uri: str,
    *,
    max_images_per_class: int = 0,
    val_fraction: float = 0.2,
) -> dict:
    """Stage `source` into `dataset_uri`; returns the manifest."""
    params = {"max_images_per_class": max_images_per_class, "val_fraction": val_fraction}
    manifest_uri = join_uri(dataset_uri, MANIFEST)
    if storage.exists(manifest_uri):
        existing = json.loads(storage.read_text(manifest_uri))
        if existing.get("source") == source and existing.get("params") == params:
            log.info("dataset already staged at %s; reusing its manifest", dataset_uri)
            return existing
        raise DatasetError(
            f"{dataset_uri} already holds a dataset staged from {existing.get('source')!r} "
            f"with {existing.get('params')}; choose another dataset_name instead of overwriting it"
        )

    with _local_source(source) as root:
        class_dirs = _class_folders(root)
        selected, dropped, over_cap = _select(class_dirs, max_images_per_class, val_fraction)
        _upload(selected, dataset_uri)
    files = [staged for staged, _ in selected]

    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for f in files:
        counts[f.split][f.label] = counts[f.split].get(f.label, 0) + 1
    digest = hashlib.sha256("\n".join(f"{f.sha256} {f.split} {f.label}" for f in files).encode()).hexdigest()
    manifest = {
        "source": source,
        "params": params,
        "classes": sorted(class_dirs),
        "counts": counts,
        "dropped": dropped,
        "over_cap": over_cap,
        "digest": digest,
        "files": [asdict(f) for f in files],
    }
    storage.write_text(manifest_uri, json.dumps(manifest, indent=1))
    log.info(
        "staged %d images (%s) into %s; dropped %d",
        len(files),
        {s: sum(c.values()) for s, c in counts.items()},
        dataset_uri,
        len(dropped),
    )
    return manifest


def split_of(sha256: str, val_fraction: float) -> str:
    """Deterministic split from the content hash: stable across runs and machines.

    Reads the hash's last digits: the cap samples in hash order (leading
    digits), and the two must not correlate or a capped sample lands in one split.
    """
    return "val" if int(sha256[-8:], 16) / 0x100000000 < val_fraction else "train"


def decode_error(data: bytes) -> str | None:
    """Why `data` cannot be fully decoded as an image, or None when it can."""
    try:
        decode_rgb(data)
    except ImageDecodeError as exc:
        return str(exc)
    return None


def _select(
    class_dirs: dict[str, Path], cap: int, val_fraction: float
) -> tuple[list[tuple[StagedFile, Path]], list[dict], dict[str, int]]:
    """Hash every file, drop duplicates and undecodable ones, apply the cap.

    Returns each kept file with the source path it is copied from."""
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

    files: list[tuple[StagedFile, Path]] = []
    over_cap: dict[str, int] = {}
    for label in sorted(candidates):
        kept = 0
        # Hash order is a fixed pseudo-random order: a capped sample is unbiased.
        ordered = sorted(candidates[label])
        for index, (digest, path) in enumerate(ordered):
            if cap and kept >= cap:
                over_cap[label] = len(ordered) - index
                break
            reason = decode_error(path.read_bytes())
            if reason:
                dropped.append({"file": str(path), "reason": reason})
                continue
            split = split_of(digest, val_fraction)
            staged = StagedFile(f"{split}/{label}/{path.name}", label, split, digest)
            files.append((staged, path))
            kept += 1
    if not files:
        raise DatasetError("no decodable images were found in the source")
    for split in SPLITS:
        if not any(staged.split == split for staged, _ in files):
            raise DatasetError(f"the {split} split is empty; stage more images")
    return files, dropped, over_cap


def _upload(selected: list[tuple[StagedFile, Path]], dataset_uri: str) -> None:
    """Copy the kept files; ones already there (a resumed run) are skipped."""
    present = set(storage.list_files(dataset_uri))

    def copy(item: tuple[StagedFile, Path]) -> None:
        staged, source_path = item
        uri = join_uri(dataset_uri, staged.path)
        if uri not in present:
            storage.write_bytes(uri, source_path.read_bytes())

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(copy, selected))


def _class_folders(root: Path) -> dict[str, Path]:
    """Class name -> folder; descends through single wrapper folders like PetImages/."""
    folder = root
    while True:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
        if len(subdirs) == 1 and not _has_files(folder):
            folder = subdirs[0]
            continue
        break
    classes = {d.name: d for d in subdirs if _has_files(d)}
    if len(classes) < 2:
        found = ", ".join(f"{d.name}/" for d in subdirs) or "no sub-folders"
        raise DatasetError(
            f"need at least two class folders of images (class/*.jpg) in {root}; found {found}"
        )
    return classes


def _has_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.iterdir())


@contextlib.contextmanager
def _local_source(source: str) -> Iterator[Path]:
    if source.startswith(("http://", "https://")):
        with tempfile.TemporaryDirectory(prefix="dogs-cats-source-") as tmp:
            yield _download_and_extract(source, Path(tmp))
    elif storage.is_remote(source):
        with storage.local_tree(source) as path:
            yield path
    else:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise DatasetError(f"source folder {source!r} does not exist")
        yield path


def _download_and_extract(url: str, workdir: Path) -> Path:
    archive = workdir / "source.zip"
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    extracted = workdir / "extracted"
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (extracted / member.filename).resolve()
            if not target.is_relative_to(extracted.resolve()):
                log.warning("refusing archive member outside the target: %s", member.filename)
                continue
            zf.extract(member, extracted)
    archive.unlink()
    return extracted
