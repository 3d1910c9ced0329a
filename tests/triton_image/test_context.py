"""The Triton server image: its Dockerfile and its build context."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from core.constants import TRITON_METRICS_FLAG
from core.settings import Environment
from deploy.local_triton import restricted_api_flags
from harness.data import fake_model
from harness.tools import hadolint
from model_repository.repository import RepositoryVersion, package_model
from triton_image.context import (
    DOCKERFILE,
    DOCKERFILES,
    context_files,
    deterministic_targz,
    unpack_build_context,
    upload_build_context,
)


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_pinned_ngc_release() -> None:
    (pinned,) = re.findall(r"^ARG TRITON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", pinned)


@pytest.mark.security
def test_server_runs_as_non_root_with_model_control_off() -> None:
    text = DOCKERFILE.read_text()
    assert "USER 10001" in text
    assert "--model-control-mode=none" in text
    assert "COPY --chown=10001:10001 model_repository/ /models/" in text


Packaged = tuple[Path, RepositoryVersion]


@pytest.fixture
def packaged(tmp_path: Path) -> Packaged:
    repository = tmp_path / "repo"
    for run in ("a", "b"):
        model_uri = fake_model(tmp_path / run)
        version = package_model(
            model_uri, str(repository), flavour="onnxruntime", model_name="dogs_cats", max_batch_size=8
        )
    (repository / "dogs_cats" / "1" / "__pycache__").mkdir()
    (repository / "dogs_cats" / "1" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    return repository, version


def test_context_holds_the_dockerfile_and_the_three_models(packaged: Packaged) -> None:
    _, version = packaged
    names = set(context_files(version))
    assert "Dockerfile" in names
    assert {
        "model_repository/dogs_cats/config.pbtxt",
        "model_repository/dogs_cats/1/model.onnx",
        "model_repository/dogs_cats/2/model.onnx",
        "model_repository/dogs_cats_preprocess/1/model.py",
        "model_repository/dogs_cats_jpeg/config.pbtxt",
    } <= names
    assert not any("__pycache__" in name for name in names)


def test_archive_bytes_depend_only_on_content() -> None:
    files = {"b": b"2", "a": b"1"}
    assert deterministic_targz(files) == deterministic_targz(dict(reversed(files.items())))
    assert deterministic_targz(files) != deterministic_targz({**files, "a": b"changed"})
    with tarfile.open(fileobj=io.BytesIO(deterministic_targz(files))) as archive:
        assert archive.getnames() == ["a", "b"]
        assert {member.mtime for member in archive.getmembers()} == {0}


def test_image_tag_is_the_version_and_the_content_digest(tmp_path: Path, packaged: Packaged) -> None:
    _, version = packaged
    bucket = tmp_path / "bucket"
    environment = Environment(registry="registry.example/team/")
    build = upload_build_context(version, str(bucket / "images"), environment, "onnxruntime")
    tag = build.image.rsplit(":", 1)[1]
    assert re.fullmatch(r"v2-[0-9a-f]{12}", tag)
    assert build.image == f"registry.example/team/dogs-cats-triton:{tag}"
    assert build.context_uri == str(bucket / "images" / f"dogs-cats-triton-{tag}.tar.gz")
    assert Path(build.context_uri).read_bytes()[:2] == b"\x1f\x8b"
    assert build.build_args == {}
    again = upload_build_context(version, str(bucket / "images"), environment, "onnxruntime")
    assert again == build, "a retried task builds the same tag"


def test_the_cpu_flavour_builds_on_the_runtime_image_it_is_given(tmp_path: Path, packaged: Packaged) -> None:
    _, version = packaged
    images = str(tmp_path / "bucket" / "images")
    with pytest.raises(ValueError, match="DOGS_CATS_CPU_RUNTIME_IMAGE is empty"):
        upload_build_context(version, images, Environment(), "python")
    first = upload_build_context(version, images, Environment(cpu_runtime_image="r/runtime:1"), "python")
    assert first.build_args == {"RUNTIME_IMAGE": "r/runtime:1"}
    unpacked = tmp_path / "context"
    unpack_build_context(first.context_uri, unpacked)
    assert (unpacked / "Dockerfile").read_bytes() == DOCKERFILES["python"].read_bytes()
    assert (unpacked / "model_repository" / "dogs_cats" / "2" / "model.onnx").is_file()
    other = upload_build_context(version, images, Environment(cpu_runtime_image="r/runtime:2"), "python")
    assert other.image != first.image, "another base is another image"


def test_unpacking_refuses_anything_but_plain_files_inside(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "bad.tar.gz").write_bytes(raw.getvalue())
    with pytest.raises(ValueError, match=re.escape("refusing '../escape'")):
        unpack_build_context(str(tmp_path / "bad.tar.gz"), tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_a_missing_version_is_refused(tmp_path: Path, packaged: Packaged) -> None:
    repository, version = packaged
    (repository / "dogs_cats" / "2" / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="version 2 of dogs_cats"):
        context_files(version)


@pytest.mark.security
@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILES["python"]], ids=lambda path: path.name)
def test_the_image_puts_triton_s_control_apis_behind_the_key(dockerfile: Path) -> None:
    """The same flags as the local server's, the key taken from the environment at start."""
    command = dockerfile.read_text().split("\nCMD ", 1)[1].replace("\\\n", "")
    for flag in restricted_api_flags("${TRITON_ADMIN_KEY}"):
        assert flag in command
    assert 'test -n \\"$TRITON_ADMIN_KEY\\" ||' in command, "no key, no server"


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILES["python"]], ids=lambda path: path.name)
def test_the_image_exports_the_latency_quantiles_prometheus_records(dockerfile: Path) -> None:
    command = dockerfile.read_text().split("\nCMD ", 1)[1]
    assert TRITON_METRICS_FLAG in command
