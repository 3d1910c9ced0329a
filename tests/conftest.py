"""Shared fixtures: generated images, free ports, an isolated Airflow home.

Airflow reads its configuration when first imported, so the environment it
needs is set here, before any test module imports it.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from deploy.local_triton import LocalTriton
    from model_repository.repository import RepositoryVersion

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="dogs-cats-airflow-"))
REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
)

CLASS_CHANNELS = {"cat": 0, "dog": 2}  # cats are red, dogs are blue: learnable in seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_images(root: Path, per_class: int, size: int = 48, seed: int = 0) -> Path:
    """`root/<class>/<class><i>.jpg`: noisy images tinted by class."""
    rng = np.random.default_rng(seed)
    for label, channel in CLASS_CHANNELS.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(folder / f"{label}{index}.jpg", quality=90)
    return root


# File name -> the reason it must be refused with, or None when it must be classified.
IMAGE_KINDS: dict[str, str | None] = {
    "cmyk.jpg": None,
    "grey.jpg": None,
    "rgba.png": None,
    "sixteen_bit.png": None,
    "palette.gif": None,
    "empty.jpg": "empty file",
    "text.jpg": "not an image",
    "truncated.jpg": "image",  # Pillow's words vary: "image file is truncated", "broken data stream"
    "bomb.png": "decompression bomb",
}


def write_image_kinds(folder: Path) -> Path:
    """One file of each kind in IMAGE_KINDS: odd but valid modes, and broken or hostile files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("L").save(folder / "grey.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (60, 80), dtype=np.uint16)).save(folder / "sixteen_bit.png")
    rgb.convert("P").save(folder / "palette.gif")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    whole = folder / "whole.jpg"
    rgb.resize((400, 300)).save(whole, quality=95)
    (folder / "truncated.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 MP in a few KB
    return folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "source", per_class=12)


@pytest.fixture(scope="session")
def session_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"), per_class=20)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, session_images: Path) -> str:
    """A small model trained once per session on generated images (model folder URI)."""
    from training.job import TrainingJob
    from training.staging import StagingOptions, stage_dataset
    from training.train import train

    bucket = tmp_path_factory.mktemp("bucket")
    dataset_uri = str(bucket / "datasets" / "generated")
    stage_dataset(
        str(session_images),
        dataset_uri,
        StagingOptions(val_fraction=0.25),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    model_uri = str(bucket / "models" / "session")
    train(TrainingJob(dataset_uri, model_uri, image_size=32, epochs=2, batch_size=8))
    return model_uri


@pytest.fixture
def server_ports() -> dict[str, int]:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


@contextmanager
def serving_model_folder(
    model_uri: str, work: Path, *, max_batch_size: int = 8, instances: int = 1, ort_threads: int = 0
) -> Iterator[tuple[LocalTriton, RepositoryVersion]]:
    """A model folder packaged into its own repository and served by a real local
    tritonserver on free ports, classifier and JPEG ensemble loaded; stopped afterwards."""
    from deploy.local_triton import LocalTriton
    from model_repository.repository import package_model

    name = f"{Path(model_uri).name}-{instances}x{ort_threads}"
    version = package_model(
        model_uri,
        str(work / f"repository-{name}"),
        flavour="python",
        model_name="dogs_cats",
        max_batch_size=max_batch_size,
        instances=instances,
        ort_threads=ort_threads,
    )
    server = LocalTriton(
        work / f"state-{name}", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    state = server.ensure_running(work / f"repository-{name}", timeout_s=120)
    try:
        server.load(state, "dogs_cats", timeout_s=300)
        server.load(state, "dogs_cats_jpeg", timeout_s=300)
        yield server, version
    finally:
        server.stop()


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory, trained_model: str) -> Iterator[dict]:
    """The session's model served by a real local tritonserver (stopped afterwards)."""
    with serving_model_folder(trained_model, tmp_path_factory.mktemp("serving")) as (server, version):
        state = server.state()
        assert state is not None
        yield {
            "url": state.http_url,
            "grpc_url": f"127.0.0.1:{state.grpc_port}",
            "model_uri": trained_model,
            "version": version,
            "server": server,
        }


def manifest_files(dataset: Path) -> list[dict]:
    """A staged dataset's manifest entries, in path order."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    return sorted(manifest["files"], key=lambda entry: entry["path"])


def relative_files(root: Path) -> list[str]:
    """Every file under `root` as the storage layer lists it, relative to `root`."""
    from pipeline import storage

    return [uri.removeprefix(str(root)) for uri in storage.list_files(str(root))]
