"""Cluster path, stage 3b: the build context of the Triton server image.

The context is `Dockerfile` (packaging/Dockerfile) plus `model_repository/`
holding the dogs_cats models. It is a deterministic tar.gz (sorted names, zero
timestamps and owners), so its digest names its content: the image tag is the
model version plus that digest, and rebuilding the same version gives the same tag.
A BuildKit pod in the cluster (pipeline/pods.py) builds and pushes it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from core import storage
from core.constants import ensemble_name, preprocess_name
from core.settings import join_uri
from model_repository.repository import RepositoryVersion

DOCKERFILE = Path(__file__).resolve().parents[1] / "packaging" / "Dockerfile"
IMAGE_NAME = "dogs-cats-triton"
_SKIPPED_PARTS = frozenset({"__pycache__"})


@dataclass(frozen=True)
class ImageBuild:
    context_uri: str
    image: str  # registry/name:tag
    digest: str  # sha256 of the context archive

    def to_dict(self) -> dict:
        return asdict(self)


def triton_base_image(dockerfile: Path = DOCKERFILE) -> str:
    """The NGC tritonserver image the Dockerfile pins (its single source of truth)."""
    match = re.search(r"^ARG TRITON_IMAGE=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{dockerfile} does not pin ARG TRITON_IMAGE")
    return match.group(1)


def context_files(version: RepositoryVersion) -> dict[str, bytes]:
    """Archive name -> bytes for the Dockerfile and the three dogs_cats models."""
    if not DOCKERFILE.exists():
        raise FileNotFoundError(f"{DOCKERFILE} is missing: the cluster path needs the project's packaging/")
    files = {"Dockerfile": DOCKERFILE.read_bytes()}
    name = version.model_name
    for model in (name, preprocess_name(name), ensemble_name(name)):
        model_uri = join_uri(version.repository_uri, model)
        for uri in storage.list_files(model_uri):
            relative = storage.relative_key(uri, model_uri)
            if _SKIPPED_PARTS.isdisjoint(relative.split("/")):
                files[f"model_repository/{model}/{relative}"] = storage.read_bytes(uri)
    if f"model_repository/{name}/{version.version}/model.onnx" not in files:
        raise FileNotFoundError(f"version {version.version} of {name} is not in {version.repository_uri}")
    return files


def deterministic_targz(files: dict[str, bytes]) -> bytes:
    """tar.gz whose bytes depend only on the names and contents."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            archive.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


def upload_build_context(version: RepositoryVersion, images_uri: str, registry: str) -> ImageBuild:
    """Write the context into `images_uri` (the plan's `{bucket}/images`); name the image it becomes."""
    archive = deterministic_targz(context_files(version))
    digest = hashlib.sha256(archive).hexdigest()
    tag = f"v{version.version}-{digest[:12]}"
    context_uri = join_uri(images_uri, f"{IMAGE_NAME}-{tag}.tar.gz")
    storage.create(context_uri, archive)  # a retried task finds the same bytes already there
    return ImageBuild(context_uri, f"{registry.rstrip('/')}/{IMAGE_NAME}:{tag}", digest)
