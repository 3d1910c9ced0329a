"""Near-duplicates: generated copies of photo-like images join their originals, different
images do not, the banded search finds what comparing every pair finds, and staging keeps
each group on one side of the split."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core.images import decode_rgb
from harness.data import REPO_ROOT, photo_like
from training.near_duplicates import NEAR_BITS, near_duplicate_groups, perceptual_hash
from training.staging import StagingOptions, split_of, stage_dataset


def _photo(seed: int, size: int = 160) -> Image.Image:
    return photo_like(seed, size, size)


def _copies(photo: Image.Image) -> dict[str, Image.Image]:
    """What a scraped dataset holds twice: resized, re-encoded, lightly cropped."""
    width, height = photo.size
    encoded = io.BytesIO()
    photo.save(encoded, "JPEG", quality=50)
    crop = round(width * 0.02)
    return {
        "resized": photo.resize((width // 2, height // 2)),
        "reencoded": Image.open(io.BytesIO(encoded.getvalue())).convert("RGB"),
        "cropped": photo.crop((crop, crop, width - crop, height - crop)),
    }


def _hash(image: Image.Image) -> int:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return perceptual_hash(decode_rgb(buffer.getvalue()))


def test_copies_join_their_original_and_different_photos_stay_apart() -> None:
    hashes = {}
    for seed in range(12):
        photo = _photo(seed)
        hashes[f"{seed:02d}-original"] = _hash(photo)
        hashes.update({f"{seed:02d}-{kind}": _hash(copy) for kind, copy in _copies(photo).items()})
    groups = near_duplicate_groups(hashes)
    assert groups == [
        [f"{seed:02d}-{kind}" for kind in ("cropped", "original", "reencoded", "resized")]
        for seed in range(12)
    ]


def _brute_force(hashes: dict[str, int]) -> list[list[str]]:
    """Every pair compared, joined transitively: what the banded search must equal."""
    keys = sorted(hashes)
    group = {key: {key} for key in keys}
    for a, b in itertools.combinations(keys, 2):
        if (hashes[a] ^ hashes[b]).bit_count() <= NEAR_BITS and group[a] is not group[b]:
            merged = group[a] | group[b]
            for key in merged:
                group[key] = merged
    unique = {id(members): sorted(members) for members in group.values() if len(members) > 1}
    return sorted(unique.values())


@settings(max_examples=60, deadline=None)
@given(
    bases=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=30),
    flips=st.lists(st.lists(st.integers(0, 63), max_size=12), max_size=30),
)
def test_the_banded_search_finds_what_comparing_every_pair_finds(
    bases: list[int], flips: list[list[int]]
) -> None:
    hashes = {f"base{i}": base for i, base in enumerate(bases)}
    for i, bits in enumerate(flips):  # copies of a base with some bits flipped: near or not
        hashes[f"copy{i}"] = bases[i % len(bases)] ^ sum(1 << bit for bit in set(bits))
    assert near_duplicate_groups(hashes) == _brute_force(hashes)


def test_staging_keeps_each_group_on_one_side_of_the_split(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for seed in range(24):
        label = ("cat", "dog")[seed % 2]
        (source / label).mkdir(parents=True, exist_ok=True)
        photo = _photo(100 + seed)
        photo.save(source / label / f"p{seed}.jpg", quality=92)
        for kind, copy in _copies(photo).items():
            copy.save(source / label / f"p{seed}-{kind}.jpg", quality=92)
    # One picture under both labels is ambiguous, as an exact copy there is: both go.
    ambiguous = _photo(999)
    ambiguous.save(source / "cat" / "both.jpg", quality=92)
    _copies(ambiguous)["resized"].save(source / "dog" / "both-small.jpg", quality=92)
    manifest = stage_dataset(
        str(source), str(tmp_path / "ds"), StagingOptions(val_fraction=0.3), cache_dir=tmp_path / "cache"
    )
    reasons = {Path(entry["file"]).name: entry["reason"] for entry in manifest["dropped"]}
    assert reasons == dict.fromkeys(
        ["both.jpg", "both-small.jpg"], "near-duplicate pictures in classes ['cat', 'dog']"
    )
    by_path = {entry["path"]: entry for entry in manifest["files"]}
    groups = manifest["near_duplicate_groups"]
    assert sorted(len(group) for group in groups) == [4] * 24, "each photo with its three copies"
    for group in groups:
        assert len({by_path[path]["split"] for path in group}) == 1, group
        assert len({Path(path).stem.split("-")[0] for path in group}) == 1, group
    # Split by each file's own hash, as before, at least one group would have straddled.
    assert any(len({split_of(by_path[path]["sha256"], 0.3) for path in group}) > 1 for group in groups)


def test_training_needs_no_staging_extra() -> None:
    """The training image installs the training extra only: `python -m training train`
    must import without imagehash (it reads staging's constants)."""
    blocked = "import sys; sys.modules['imagehash'] = None; import training.train, training.__main__"
    result = subprocess.run([sys.executable, "-c", blocked], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
