from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import shutil
import socket
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from core import storage
from core.policy import AccessPolicy, PolicyRefused
from harness.data import write_images
from harness.http_server import serve_files
from harness.serving import free_port
from training.sources import DatasetError
from training.staging import (
    SPLITS,
    StagingOptions,
    examine,
    read_manifest,
    split_files,
    split_of,
    stage_dataset,
)


def stage(source: str | Path, dataset: str | Path, cache: Path | None = None, **options: Any) -> dict:
    cache_dir = cache or Path(str(dataset) + "-cache")
    return stage_dataset(str(source), str(dataset), StagingOptions(**options), cache_dir=cache_dir)


def reasons_by_name(manifest: dict) -> dict[str, str]:
    return {Path(d["file"]).name: d["reason"] for d in manifest["dropped"]}


def test_stages_a_split_with_a_manifest(image_folder: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "bucket" / "datasets" / "pets"
    manifest = stage(image_folder, dataset, val_fraction=0.3)
    assert manifest["classes"] == ["cat", "dog"]
    counts = manifest["counts"]
    assert sum(sum(c.values()) for c in counts.values()) == 24
    assert counts["val"]
    assert counts["train"]
    assert counts["test"], "a test split by default"
    for entry in manifest["files"]:
        assert (dataset / entry["path"]).is_file()
        assert entry["path"].startswith(f"{entry['split']}/{entry['label']}/")
        assert entry["split"] == split_of(entry["sha256"], 0.3, 0.1)
    assert manifest["balance"] == {"per_class": {"cat": 12, "dog": 12}, "min_to_max": 1.0}
    # Training and the benchmarks read the manifest, and each split's entries, back.
    assert read_manifest(str(dataset)) == manifest
    for split in SPLITS:
        assert len(split_files(manifest, split)) == sum(counts[split].values())
    with pytest.raises(ValueError, match="no split 'validation'"):
        split_files(manifest, "validation")


def test_split_is_a_pure_function_of_content(tmp_path: Path) -> None:
    source = write_images(tmp_path / "many", per_class=150)
    manifest = stage(source, tmp_path / "ds", val_fraction=0.2, test_fraction=0.1)
    shares = {split: sum(c.values()) / 300 for split, c in manifest["counts"].items()}
    assert shares["val"] == pytest.approx(0.2, abs=0.08)
    assert shares["test"] == pytest.approx(0.1, abs=0.06)
    # The same bytes under another name land in the same split.
    renamed = tmp_path / "renamed"
    shutil.copytree(source, renamed)
    for path in sorted(renamed.rglob("*.jpg")):
        path.rename(path.with_name("x" + path.name))
    again = stage(renamed, tmp_path / "ds2", val_fraction=0.2, test_fraction=0.1)
    assert {(f["sha256"], f["split"]) for f in again["files"]} == {
        (f["sha256"], f["split"]) for f in manifest["files"]
    }


def test_fractions_must_leave_room_for_training() -> None:
    # Checked where the option is defined (StagingParams), so the DAG refuses it in its plan task too.
    with pytest.raises(ValidationError, match="must leave a share for training"):
        StagingOptions(val_fraction=0.5, test_fraction=0.5)


def test_drops_corrupt_empty_and_duplicate_files(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "cat" / "notes.jpg").write_text("not an image")
    (image_folder / "cat" / "empty.jpg").write_bytes(b"")
    truncated = (image_folder / "dog" / "dog0.jpg").read_bytes()[:300]
    (image_folder / "dog" / "truncated.jpg").write_bytes(truncated)
    shutil.copy(image_folder / "dog" / "dog1.jpg", image_folder / "dog" / "copy.jpg")
    shutil.copy(image_folder / "cat" / "cat1.jpg", image_folder / "dog" / "cat_in_dogs.jpg")

    manifest = stage(image_folder, tmp_path / "ds")
    reasons = reasons_by_name(manifest)
    assert reasons["notes.jpg"] == "not an image Pillow can read"
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["truncated.jpg"].startswith("cannot decode image: OSError: Truncated File Read")
    # Of two identical files the first by path is kept.
    assert reasons["dog1.jpg"] == f"duplicate of {image_folder / 'dog' / 'copy.jpg'}"
    # The same content under two classes is ambiguous: dropped from both.
    assert "same content in classes ['cat', 'dog']" in reasons["cat_in_dogs.jpg"]
    assert "same content in classes" in reasons["cat1.jpg"]
    assert manifest["duplicate_groups"] == 2
    kept = {Path(f["path"]).name for f in manifest["files"]}
    assert kept.isdisjoint({"notes.jpg", "empty.jpg", "truncated.jpg", "cat1.jpg", "cat_in_dogs.jpg"})
    # 24 originals, less cat1 (ambiguous), with dog1's content kept once as copy.jpg.
    assert len(kept) == 23
    assert "copy.jpg" in kept


def test_jfif_filter_and_pixel_limit(image_folder: Path, tmp_path: Path) -> None:
    # Noise, not a flat colour: two flat images are one picture to the near-duplicate check, and
    # the flat huge.png is under the other class.
    noise = np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(image_folder / "cat" / "plain.png")
    Image.new("L", (1200, 1000)).save(image_folder / "dog" / "huge.png")  # tiny file, 1.2 M pixels
    options = StagingOptions(require_jfif=True, max_image_pixels=1_000_000)
    assert (
        examine((image_folder / "cat" / "plain.png").read_bytes(), options) == "no JFIF marker in the header"
    )
    assert examine(
        (image_folder / "dog" / "huge.png").read_bytes(), StagingOptions(max_image_pixels=1_000_000)
    ) == ("decompression bomb: 1200 x 1000 pixels is over the limit of 1000000")
    manifest = stage(image_folder, tmp_path / "ds", require_jfif=True, max_image_pixels=1_000_000)
    assert set(reasons_by_name(manifest)) == {"plain.png", "huge.png"}
    relaxed = stage(image_folder, tmp_path / "ds2")
    assert "plain.png" in {Path(f["path"]).name for f in relaxed["files"]}


def test_cap_keeps_both_splits_filled(tmp_path: Path) -> None:
    source = write_images(tmp_path / "many", per_class=60)
    manifest = stage(source, tmp_path / "ds", max_images_per_class=20, val_fraction=0.25)
    for label in ("cat", "dog"):
        assert manifest["counts"]["train"][label] + manifest["counts"]["val"][label] == 20
        assert manifest["counts"]["val"][label] > 0
    assert manifest["over_cap"] == {"cat": 40, "dog": 40}


def test_unbalanced_classes_are_reported(image_folder: Path, tmp_path: Path) -> None:
    for path in sorted((image_folder / "dog").iterdir())[:8]:
        path.unlink()
    manifest = stage(image_folder, tmp_path / "ds")
    assert manifest["balance"] == {"per_class": {"cat": 12, "dog": 4}, "min_to_max": 0.3333}


def test_rerun_reuses_the_manifest_and_copies_nothing(image_folder: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    first = stage(image_folder, dataset)
    staged = dataset / first["files"][0]["path"]
    staged.write_bytes(b"marker")  # a rerun that copied again would overwrite this
    assert stage(image_folder, dataset) == first
    assert staged.read_bytes() == b"marker"


def test_rerun_with_other_params_is_refused_not_overwritten(image_folder: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "ds"
    stage(image_folder, dataset)
    with pytest.raises(DatasetError, match="already holds a dataset"):
        stage(image_folder, dataset, max_images_per_class=3)
    assert json.loads((dataset / "manifest.json").read_text())["params"]["max_images_per_class"] == 0


def test_descends_through_a_wrapper_folder(image_folder: Path, tmp_path: Path) -> None:
    shutil.copytree(image_folder, tmp_path / "archive" / "PetImages")
    assert stage(tmp_path / "archive", tmp_path / "ds")["classes"] == ["cat", "dog"]


def test_one_class_is_a_clear_error(image_folder: Path, tmp_path: Path) -> None:
    shutil.rmtree(image_folder / "dog")
    (image_folder / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"at least two class folders.*found cat/"):
        stage(image_folder, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_a_class_with_no_usable_image_is_a_clear_error(image_folder: Path, tmp_path: Path) -> None:
    for path in (image_folder / "dog").iterdir():
        path.write_bytes(b"junk")
    with pytest.raises(DatasetError, match="class 'dog' has no usable images"):
        stage(image_folder, tmp_path / "ds")


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        stage(tmp_path / "nowhere", tmp_path / "ds")


def _zip_with_traps(image_folder: Path, target: Path) -> Path:
    """The images under PetImages/, plus a zip-slip member, a link and a truncated image."""
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(image_folder.rglob("*.jpg")):
            archive.write(path, f"PetImages/{path.relative_to(image_folder)}")
        archive.writestr("../../evil.jpg", (image_folder / "cat" / "cat0.jpg").read_bytes())
        link = zipfile.ZipInfo("PetImages/cat/link.jpg")
        link.external_attr = (0o120777 << 16) | 0  # a symlink's mode bits
        archive.writestr(link, "/etc/passwd")
        archive.writestr(
            "PetImages/dog/truncated.jpg", (image_folder / "dog" / "dog0.jpg").read_bytes()[:200]
        )
        archive.writestr("PetImages/dog/dup.jpg", (image_folder / "dog" / "dog3.jpg").read_bytes())
    return target


def test_stages_a_zip_over_http_refusing_unsafe_members(image_folder: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    _zip_with_traps(image_folder, www / "pets.zip")
    with serve_files(www) as server:
        manifest = stage(server.url("pets.zip"), tmp_path / "ds", cache=tmp_path / "cache")
    reasons = {d["file"]: d["reason"] for d in manifest["dropped"]}
    assert reasons["../../evil.jpg"] == "archive member outside the target (zip-slip)"
    assert reasons["PetImages/cat/link.jpg"] == "archive member is a link"
    assert any(name.endswith("truncated.jpg") and "Truncated" in r for name, r in reasons.items())
    assert any(r.startswith("duplicate of") for r in reasons.values())
    assert manifest["classes"] == ["cat", "dog"]
    assert len(manifest["files"]) == 24
    assert not (tmp_path / "evil.jpg").exists()
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_tar_links_and_devices_are_refused(image_folder: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    with tarfile.open(www / "pets.tar.gz", "w:gz") as archive:
        archive.add(image_folder, arcname="pets")
        for name, kind in (("pets/cat/sym.jpg", tarfile.SYMTYPE), ("pets/dog/tty.jpg", tarfile.CHRTYPE)):
            member = tarfile.TarInfo(name)
            member.type = kind
            member.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            archive.addfile(member)
    with serve_files(www) as server:
        manifest = stage(server.url("pets.tar.gz"), tmp_path / "ds")
    reasons = {d["file"]: d["reason"] for d in manifest["dropped"]}
    assert reasons == {
        "pets/cat/sym.jpg": "archive member is a link",
        "pets/dog/tty.jpg": "archive member is a device or special file",
    }
    assert len(manifest["files"]) == 24


def test_one_class_archive_is_a_clear_error(image_folder: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    shutil.make_archive(str(www / "cats"), "zip", image_folder, "cat")
    with serve_files(www) as server, pytest.raises(DatasetError, match="found no sub-folders"):
        stage(server.url("cats.zip"), tmp_path / "ds")


def test_an_interrupted_download_resumes_where_it_stopped(image_folder: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    archive = Path(shutil.make_archive(str(www / "pets"), "zip", image_folder))
    size = archive.stat().st_size
    cache = tmp_path / "cache"
    with serve_files(www) as server:
        server.cut_after["pets.zip"] = size // 3
        with pytest.raises(DatasetError, match=rf"incomplete: {size // 3} of {size} bytes; rerun to resume"):
            stage(server.url("pets.zip"), tmp_path / "ds", cache=cache)
        assert not (tmp_path / "ds").exists(), "nothing staged from a partial archive"
        manifest = stage(server.url("pets.zip"), tmp_path / "ds", cache=cache)
        assert server.ranges == [None, f"bytes={size // 3}-"]
    assert len(manifest["files"]) == 24
    (cached,) = cache.iterdir()
    assert cached.read_bytes() == archive.read_bytes()


def test_checksum_is_checked(image_folder: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    archive = Path(shutil.make_archive(str(www / "pets"), "zip", image_folder))
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    with serve_files(www) as server:
        with pytest.raises(DatasetError, match="does not match the expected sha256"):
            stage(server.url("pets.zip"), tmp_path / "bad", cache=tmp_path / "c1", source_sha256="0" * 64)
        assert list((tmp_path / "c1").iterdir()) == [], "a corrupt download is not kept"
        manifest = stage(server.url("pets.zip"), tmp_path / "ok", cache=tmp_path / "c2", source_sha256=good)
    assert len(manifest["files"]) == 24


def test_an_unreachable_url_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/pets.zip"
    with pytest.raises(DatasetError, match=r"cannot download .*use a local folder or gs:// prefix"):
        stage(url, tmp_path / "ds")


def test_a_missing_file_on_the_server_is_a_clear_error(tmp_path: Path) -> None:
    with serve_files(tmp_path) as server, pytest.raises(DatasetError, match="Not Found"):
        stage(server.url("absent.zip"), tmp_path / "ds")


def test_not_an_archive_is_a_clear_error(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "page.zip").write_text("<html>a login page</html>")
    with serve_files(www) as server, pytest.raises(DatasetError, match="neither a zip nor a tar archive"):
        stage(server.url("page.zip"), tmp_path / "ds")


@pytest.mark.integration
def test_gcs_staging_reruns_and_resumes_without_reuploading(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.gcs import emulated_gcs

    with emulated_gcs("stage-test", free_port()) as bucket:
        storage.upload_tree(image_folder, f"{bucket}/raw")
        dataset = f"{bucket}/datasets/pets"

        # Crash after a third of the uploads.
        real_write = storage.write_bytes
        calls = {"n": 0}

        def flaky_write(uri: str, data: bytes) -> None:
            calls["n"] += 1
            if calls["n"] > 8:
                raise ConnectionError("bucket went away")
            real_write(uri, data)

        monkeypatch.setattr(storage, "write_bytes", flaky_write)
        with pytest.raises(ConnectionError):
            stage(f"{bucket}/raw", dataset, cache=Path("/nonexistent"))
        monkeypatch.setattr(storage, "write_bytes", real_write)
        first_objects = storage.list_files(dataset)
        assert len(first_objects) == 8
        assert f"{dataset}/manifest.json" not in first_objects

        gcs = storage.storage_for(dataset)
        generations = {uri: _generation(gcs, uri) for uri in first_objects}
        manifest = stage(f"{bucket}/raw", dataset, cache=Path("/nonexistent"))
        staged = storage.list_files(dataset)
        assert len(staged) == len(manifest["files"]) + 1  # + manifest.json
        assert {uri: _generation(gcs, uri) for uri in first_objects} == generations, (
            "resumed, not re-uploaded"
        )

        rerun_generations = {uri: _generation(gcs, uri) for uri in staged}
        assert stage(f"{bucket}/raw", dataset, cache=Path("/nonexistent")) == manifest
        assert {uri: _generation(gcs, uri) for uri in staged} == rerun_generations, "a rerun uploads nothing"


def _generation(gcs: Any, uri: str) -> int:
    bucket, key = gcs.split(uri)
    blob = gcs.client.bucket(bucket).get_blob(key)
    return int(blob.generation)


def test_images_decode_as_rgb_whatever_their_mode(tmp_path: Path) -> None:
    for mode in ("L", "RGBA", "CMYK", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (20, 10)).save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
        assert isinstance(examine(buffer.getvalue(), StagingOptions()), int), "kept: its hash"


LOOPBACK_ONLY = AccessPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect call to anything but loopback fails the test: these archives are hostile."""
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else ""
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"a staging test tried to reach {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.mark.security
@pytest.mark.usefixtures("loopback_only")
def test_a_redirect_to_a_refused_address_is_not_followed(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    with serve_files(www) as server:
        server.redirects["pets.zip"] = "http://169.254.169.254/computeMetadata/v1/token.zip"
        with pytest.raises(
            PolicyRefused, match=r"source \(redirected by .*pets.zip\)=.*a link-local address"
        ):
            stage_dataset(
                server.url("pets.zip"), str(tmp_path / "ds"), StagingOptions(), cache_dir=tmp_path / "cache",
                policy=LOOPBACK_ONLY,
            )  # fmt: skip
    assert not (tmp_path / "ds").exists()


@pytest.mark.security
@pytest.mark.usefixtures("loopback_only")
@pytest.mark.parametrize(
    ("archive", "rule"),
    [("bomb.zip", r"134217728 bytes unpacked, over the 67108864 allowed"), ("swarm.zip", "100000 members")],
)
def test_an_archive_over_its_caps_is_refused_before_anything_is_written(
    tmp_path: Path, archive: str, rule: str
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        if archive == "bomb.zip":  # 128 MiB of zeros in about 130 KB
            out.writestr("PetImages/cat/huge.jpg", bytes(128 << 20))
        else:
            for index in range(100_000):
                out.writestr(f"PetImages/cat/{index}.jpg", b"")
    policy = AccessPolicy(allowed_networks=LOOPBACK_ONLY.allowed_networks, max_archive_bytes=64 << 20)
    with serve_files(www) as server, pytest.raises(PolicyRefused, match=rule):
        stage_dataset(
            server.url(archive),
            str(tmp_path / "ds"),
            StagingOptions(),
            cache_dir=tmp_path / "cache",
            policy=policy,
        )
    assert not (tmp_path / "ds").exists()
