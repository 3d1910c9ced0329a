from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline import storage
from training.staging import DatasetError, decode_error, split_of, stage_dataset


def _manifest(dataset: Path) -> dict:
    return json.loads((dataset / "manifest.json").read_text())


def test_stages_a_split_with_a_manifest(image_folder: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "bucket" / "datasets" / "pets"
    manifest = stage_dataset(str(image_folder), str(dataset), val_fraction=0.3)
    assert manifest["classes"] == ["cat", "dog"]
    counts = manifest["counts"]
    assert sum(sum(c.values()) for c in counts.values()) == 24
    assert counts["val"]
    assert counts["train"]
    for entry in manifest["files"]:
        staged = dataset / entry["path"]
        assert staged.is_file()
        assert entry["path"].startswith(f"{entry['split']}/{entry['label']}/")
        assert entry["split"] == split_of(entry["sha256"], 0.3)
    assert _manifest(dataset) == manifest


def test_drops_corrupt_empty_and_duplicate_files(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "cat" / "notes.jpg").write_text("not an image")
    (image_folder / "cat" / "empty.jpg").write_bytes(b"")
    truncated = (image_folder / "dog" / "dog0.jpg").read_bytes()[:300]
    (image_folder / "dog" / "truncated.jpg").write_bytes(truncated)
    shutil.copy(image_folder / "dog" / "dog1.jpg", image_folder / "dog" / "copy.jpg")
    shutil.copy(image_folder / "cat" / "cat1.jpg", image_folder / "dog" / "cat_in_dogs.jpg")

    manifest = stage_dataset(str(image_folder), str(tmp_path / "ds"))
    reasons = {Path(d["file"]).name: d["reason"] for d in manifest["dropped"]}
    assert reasons["notes.jpg"] == "not an image Pillow can read"
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["truncated.jpg"].startswith("cannot decode image: OSError: Truncated File Read")
    # Of two identical files the first by path is kept.
    assert reasons["dog1.jpg"] == f"duplicate of {image_folder / 'dog' / 'copy.jpg'}"
    # The same content under two classes is ambiguous: dropped from both.
    assert "same content in classes ['cat', 'dog']" in reasons["cat_in_dogs.jpg"]
    assert "same content in classes" in reasons["cat1.jpg"]
    kept = {Path(f["path"]).name for f in manifest["files"]}
    assert kept.isdisjoint({"notes.jpg", "empty.jpg", "truncated.jpg", "cat1.jpg", "cat_in_dogs.jpg"})
    # 24 originals, less cat1 (ambiguous), with dog1's content kept once as copy.jpg.
    assert len(kept) == 23
    assert "copy.jpg" in kept


def test_cap_keeps_both_splits_filled(tmp_path: Path) -> None:
    from tests.conftest import write_images

    source = write_images(tmp_path / "many", per_class=60)
    manifest = stage_dataset(str(source), str(tmp_path / "ds"), max_images_per_class=20, val_fraction=0.25)
    for label in ("cat", "dog"):
        assert manifest["counts"]["train"][label] + manifest["counts"]["val"][label] == 20
        assert manifest["counts"]["val"][label] > 0
    assert manifest["over_cap"] == {"cat": 40, "dog": 40}


def test_rerun_reuses_the_manifest_and_copies_nothing(image_folder: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    first = stage_dataset(str(image_folder), str(dataset))
    staged = dataset / first["files"][0]["path"]
    staged.write_bytes(b"marker")  # a rerun that copied again would overwrite this
    assert stage_dataset(str(image_folder), str(dataset)) == first
    assert staged.read_bytes() == b"marker"


def test_rerun_with_other_params_is_refused_not_overwritten(image_folder: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    stage_dataset(str(image_folder), str(dataset))
    with pytest.raises(DatasetError, match="already holds a dataset"):
        stage_dataset(str(image_folder), str(dataset), max_images_per_class=3)
    assert _manifest(dataset)["params"]["max_images_per_class"] == 0


def test_descends_through_a_wrapper_folder(image_folder: Path, tmp_path: Path) -> None:
    wrapped = tmp_path / "archive" / "PetImages"
    shutil.copytree(image_folder, wrapped)
    manifest = stage_dataset(str(tmp_path / "archive"), str(tmp_path / "ds"))
    assert manifest["classes"] == ["cat", "dog"]


def test_one_class_is_a_clear_error(image_folder: Path, tmp_path: Path) -> None:
    shutil.rmtree(image_folder / "dog")
    (image_folder / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"at least two class folders.*found cat/"):
        stage_dataset(str(image_folder), str(tmp_path / "ds"))
    assert not (tmp_path / "ds").exists()


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        stage_dataset(str(tmp_path / "nowhere"), str(tmp_path / "ds"))


def test_downloads_a_zip_over_http(image_folder: Path, tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    archive = shutil.make_archive(str(tmp_path / "www" / "pets"), "zip", image_folder.parent, "source")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(Path(archive).parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/pets.zip"
        manifest = stage_dataset(url, str(tmp_path / "ds"))
    finally:
        server.shutdown()
        thread.join()
    assert manifest["classes"] == ["cat", "dog"]
    assert manifest["source"] == url
    assert len(manifest["files"]) == 24


@pytest.mark.integration
def test_stages_to_and_from_gcs(image_folder: Path) -> None:
    from tests.conftest import free_port
    from tests.gcs_emulator import emulated_gcs

    with emulated_gcs("stage-test", free_port()) as bucket:
        storage.upload_tree(image_folder, f"{bucket}/raw")
        manifest = stage_dataset(f"{bucket}/raw", f"{bucket}/datasets/pets")
        staged = storage.list_files(f"{bucket}/datasets/pets")
        assert len(staged) == len(manifest["files"]) + 1  # + manifest.json
        assert f"{bucket}/datasets/pets/manifest.json" in staged


def test_decode_error_accepts_real_images(image_folder: Path) -> None:
    assert decode_error((image_folder / "cat" / "cat0.jpg").read_bytes()) is None
