"""Stage 3: write a numbered version of the dogs_cats model into a Triton model repository.

Layout (Triton's): `{repository}/{model}/config.pbtxt`, `labels.txt`, and
`{version}/model.onnx` (+ `model.py` for the python flavour). Versions only
grow; earlier ones stay for rollback. The version folder is written before
config.pbtxt so a server polling the repository never sees a config that
points at a half-written version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from model_repository import LABELS_FILE, Flavour, config_pbtxt, python_backend_model
from pipeline import storage
from pipeline.settings import join_uri

log = logging.getLogger(__name__)

SOURCE_FILE = "source.txt"  # in each version folder: the model folder it was packaged from


@dataclass(frozen=True)
class RepositoryVersion:
    repository_uri: str
    model_name: str
    version: int
    flavour: str
    max_batch_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def existing_versions(repository_uri: str, model_name: str) -> list[int]:
    model_uri = join_uri(repository_uri, model_name)
    found = set()
    for uri in storage.list_files(model_uri):
        head = storage.relative_key(uri, model_uri).split("/", 1)[0]
        if head.isdigit():
            found.add(int(head))
    return sorted(found)


def package_model(
    model_uri: str,
    repository_uri: str,
    *,
    flavour: Flavour,
    model_name: str,
    max_batch_size: int,
) -> RepositoryVersion:
    """Add the trained model at `model_uri` as the next version in the repository.

    Idempotent: a model already packaged (a retried task) keeps its version.
    """
    metrics = json.loads(storage.read_text(join_uri(model_uri, "metrics.json")))
    labels = storage.read_text(join_uri(model_uri, LABELS_FILE))
    model_dir = join_uri(repository_uri, model_name)
    version = packaged_version(repository_uri, model_name, model_uri)
    if version is None:
        version = max(existing_versions(repository_uri, model_name), default=0) + 1
        version_dir = join_uri(model_dir, str(version))
        storage.write_bytes(
            join_uri(version_dir, "model.onnx"), storage.read_bytes(join_uri(model_uri, "model.onnx"))
        )
        if flavour == "python":
            storage.write_bytes(join_uri(version_dir, "model.py"), python_backend_model())
        storage.write_text(join_uri(version_dir, SOURCE_FILE), model_uri)  # last: the version is whole
        log.info("packaged %s as %s version %d (%s flavour)", model_uri, model_dir, version, flavour)
    else:
        log.info("%s is already version %d of %s", model_uri, version, model_dir)
    storage.write_text(join_uri(model_dir, LABELS_FILE), labels)
    storage.write_text(
        join_uri(model_dir, "config.pbtxt"),
        config_pbtxt(
            flavour,
            model_name=model_name,
            image_size=int(metrics["image_size"]),
            num_classes=len(metrics["labels"]),
            max_batch_size=max_batch_size,
        ),
    )
    return RepositoryVersion(repository_uri, model_name, version, flavour, max_batch_size)


def packaged_version(repository_uri: str, model_name: str, model_uri: str) -> int | None:
    """The version already holding `model_uri`, if any (its source.txt names it)."""
    for version in existing_versions(repository_uri, model_name):
        marker = join_uri(repository_uri, model_name, str(version), SOURCE_FILE)
        if storage.exists(marker) and storage.read_text(marker) == model_uri:
            return version
    return None
