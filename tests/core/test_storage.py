from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core import storage
from core.storage import GCSStorage
from harness.gcs import emulated_gcs
from harness.serving import free_port


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = str(tmp_path / "a" / "b.txt")
    storage.write_text(target, "one")
    storage.write_text(target, "two")
    assert storage.read_text(target) == "two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_create_writes_once_and_the_second_writer_is_told(where: str, tmp_path: Path) -> None:
    """Two attempts finishing the same part: the first wins, whole; the second learns it lost."""
    if where == "local":
        _create_twice(str(tmp_path / "parts" / "part-00000.json"))
        assert [p.name for p in (tmp_path / "parts").iterdir()] == ["part-00000.json"], "no temp files"
    else:
        with emulated_gcs("once", free_port()) as bucket:
            _create_twice(f"{bucket}/parts/part-00000.json")


def _create_twice(uri: str) -> None:
    assert storage.create(uri, b"first") is True
    assert storage.create(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"


def test_local_listing_streams_in_a_stable_order(tmp_path: Path) -> None:
    for name in ("b/2.jpg", "b/1.jpg", "a.jpg", "c/.hidden.jpg"):
        storage.write_text(str(tmp_path / name), name)
    listed = storage.iter_files(str(tmp_path))
    assert isinstance(listed, Iterator)
    assert list(listed) == [f"{tmp_path}/a.jpg", f"{tmp_path}/b/1.jpg", f"{tmp_path}/b/2.jpg"]


def test_open_writer_publishes_only_a_finished_object(tmp_path: Path) -> None:
    target = str(tmp_path / "big.jsonl")

    def cut_short() -> None:
        with storage.open_writer(target) as out:
            out.write(b"half")
            raise RuntimeError("cut short")

    with pytest.raises(RuntimeError):
        cut_short()
    assert not storage.exists(target)
    with storage.open_writer(target) as out:
        out.write(b"whole\n")
    assert storage.read_text(target) == "whole\n"


def test_local_list_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for name in ("z.txt", "d/y.txt", "d/.partial"):
        storage.write_text(str(tmp_path / name), name)
    assert storage.list_files(str(tmp_path)) == [f"{tmp_path}/d/y.txt", f"{tmp_path}/z.txt"]
    assert storage.list_files(str(tmp_path / "missing")) == []


def test_trees_round_trip_locally(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "x").mkdir(parents=True)
    (source / "x" / "1.bin").write_bytes(b"\x00\x01")
    (source / "2.txt").write_text("two")
    written = storage.upload_tree(source, str(tmp_path / "dst"))
    assert written == [f"{tmp_path}/dst/2.txt", f"{tmp_path}/dst/x/1.bin"]
    with storage.local_tree(str(tmp_path / "dst")) as local:
        assert local == tmp_path / "dst"  # a local tree is used in place, not copied
        assert (local / "x" / "1.bin").read_bytes() == b"\x00\x01"


@pytest.fixture(scope="module")
def gcs_bucket() -> Iterator[str]:
    with emulated_gcs("dogs-cats-test", free_port()) as bucket:
        yield bucket


@pytest.mark.integration
def test_gcs_round_trip_on_the_emulator(gcs_bucket: str, tmp_path: Path) -> None:
    uri = f"{gcs_bucket}/run/report.json"
    assert not storage.exists(uri)
    storage.write_text(uri, '{"ok": true}')
    assert storage.exists(uri)
    assert storage.read_text(uri) == '{"ok": true}'

    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.jpg").write_bytes(b"jpeg")
    (source / "b.txt").write_text("b")
    storage.upload_tree(source, f"{gcs_bucket}/tree")
    assert storage.list_files(f"{gcs_bucket}/tree") == [
        f"{gcs_bucket}/tree/b.txt",
        f"{gcs_bucket}/tree/sub/a.jpg",
    ]
    # A prefix is a folder: "tre" must not match "tree/".
    assert storage.list_files(f"{gcs_bucket}/tre") == []
    with storage.local_tree(f"{gcs_bucket}/tree") as local:
        assert (local / "sub" / "a.jpg").read_bytes() == b"jpeg"
    assert not local.exists(), "the temporary download is removed afterwards"


@pytest.mark.integration
def test_gcs_missing_object_raises_not_found(gcs_bucket: str) -> None:
    with pytest.raises(storage.NotFound, match=f"{gcs_bucket}/nothing/here does not exist"):
        storage.read_bytes(f"{gcs_bucket}/nothing/here")


def test_a_missing_local_file_is_named_as_a_missing_object_is(tmp_path: Path) -> None:
    with pytest.raises(storage.NotFound, match=f"{tmp_path}/nothing does not exist"):
        storage.read_bytes(str(tmp_path / "nothing"))


def test_gcs_uri_without_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="bucket"):
        GCSStorage.split("gs://")


def test_local_files_are_readable_by_others_like_any_written_file(tmp_path: Path) -> None:
    """Written through a 0600 temp file, a bucket file still ends up 0644 (a pod of another uid reads it)."""
    written, created = tmp_path / "a" / "written.txt", tmp_path / "a" / "created.txt"
    storage.write_text(str(written), "x")
    storage.create(str(created), b"y")
    assert oct(written.stat().st_mode & 0o777) == "0o644"
    assert oct(created.stat().st_mode & 0o777) == "0o644"
