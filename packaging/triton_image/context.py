"""Cluster path, stage 3b: the build context of the Triton server image.

The context is the flavour's Dockerfile (packaging/Dockerfile on the NGC image
for GPU nodes, packaging/Dockerfile.cpu on the CPU runtime) plus
`model_repository/` holding the dogs_cats models. It is a deterministic tar.gz (sorted names, zero
timestamps and owners), so its digest names its content: the image tag is the
model version plus a digest of it and the build arguments, and rebuilding the same
version gives the same tag. A BuildKit pod in the cluster (pipeline/pods.py)
fetches it with `python -m deploy unpack-context`, builds and pushes it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from core import storage
from core.constants import ensemble_name, preprocess_name
from core.settings import Environment, join_uri
from model_repository.config import Flavour
from model_repository.repository import RepositoryVersion

PACKAGING = Path(__file__).resolve().parents[1]  # packaging/, the Dockerfiles' folder
DOCKERFILE = PACKAGING / "Dockerfile"
# The image each serving flavour runs on: the NGC image's ONNX Runtime backend (GPU nodes),
# or the CPU runtime's python backend (packaging/Dockerfile.cpu-runtime).
DOCKERFILES: dict[Flavour, Path] = {"onnxruntime": DOCKERFILE, "python": PACKAGING / "Dockerfile.cpu"}
IMAGE_NAME = "dogs-cats-triton"
_SKIPPED_PARTS = frozenset({"__pycache__"})


@dataclass(frozen=True)
class ImageBuild:
    context_uri: str
    image: str  # registry/name:tag
    digest: str  # sha256 of the context archive
    build_args: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)


def context_files(version: RepositoryVersion, dockerfile: Path = DOCKERFILE) -> dict[str, bytes]:
    """Archive name -> bytes for the Dockerfile and the three dogs_cats models."""
    if not dockerfile.exists():
        raise FileNotFoundError(f"{dockerfile} is missing: the cluster path needs the project's packaging/")
    files = {"Dockerfile": dockerfile.read_bytes()}
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


def image_build_args(flavour: Flavour, environment: Environment) -> dict[str, str]:
    """The CPU flavour builds on the runtime image in the cluster's registry."""
    if flavour != "python":
        return {}
    if not environment.cpu_runtime_image:
        raise ValueError(
            "DOGS_CATS_CPU_RUNTIME_IMAGE is empty: the CPU Triton image (gpus=0) builds on the CPU runtime "
            "image (packaging/Dockerfile.cpu-runtime) pushed to your registry"
        )
    return {"RUNTIME_IMAGE": environment.cpu_runtime_image}


def upload_build_context(
    version: RepositoryVersion, images_uri: str, environment: Environment, flavour: Flavour
) -> ImageBuild:
    """Write the flavour's context into `images_uri` (the plan's `{bucket}/images`); name the
    image it becomes in the environment's registry."""
    build_args = image_build_args(flavour, environment)
    archive = deterministic_targz(context_files(version, DOCKERFILES[flavour]))
    digest = hashlib.sha256(archive).hexdigest()
    recipe = hashlib.sha256(archive + json.dumps(build_args, sort_keys=True).encode()).hexdigest()
    tag = f"v{version.version}-{recipe[:12]}"
    context_uri = join_uri(images_uri, f"{IMAGE_NAME}-{tag}.tar.gz")
    storage.create(context_uri, archive)  # a retried task finds the same bytes already there
    image = f"{environment.registry.rstrip('/')}/{IMAGE_NAME}:{tag}"
    return ImageBuild(context_uri, image, digest, build_args)


def unpack_build_context(context_uri: str, folder: Path) -> list[str]:
    """Fetch a build context from the bucket (GCS, its emulator, or a folder) into `folder`;
    what the build pod's init container runs. Returns the names unpacked."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(context_uri)), mode="r:gz") as archive:
        members = archive.getmembers()
        # Plain files inside `folder` only (Debian 12's Python 3.11.2 predates extraction filters).
        for member in members:
            if not member.isfile() or not (folder / member.name).resolve().is_relative_to(folder.resolve()):
                raise ValueError(
                    f"refusing {member.name!r} in {context_uri}: only plain files inside the context"
                )
        archive.extractall(folder)
    return [member.name for member in members]
