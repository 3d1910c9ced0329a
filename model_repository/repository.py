"""Stage 3: write a numbered version of the dogs_cats model into a Triton model repository.

Layout (Triton's): `{repository}/{model}/config.pbtxt`, `labels.txt`, and
`{version}/model.onnx` (+ `model.py` for the python flavour), beside the
preprocessing model and the `{model}_jpeg` ensemble (each version 1). Versions
of the classifier only grow; earlier ones stay for rollback. The version folder is written before
config.pbtxt so a server polling the repository never sees a config that
points at a half-written version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

from core import storage
from core.constants import INT8_MODEL_FILE, LABELS_FILE, ensemble_name, preprocess_name
from core.settings import Precision, ServingPrecision, join_uri
from model_repository.config import Flavour, config_pbtxt, ensemble_config_pbtxt, preprocess_config_pbtxt

log = logging.getLogger(__name__)

# What the preprocessing model imports from `core`, shipped beside it (Triton has no project).
PREPROCESS_IMPORTS = ("__init__.py", "images.py", "errors.py")
SOURCE_FILE = "source.txt"  # in each version folder: the model folder it was packaged from
ONNX_FILES: dict[Precision, str] = {"fp32": "model.onnx", "int8": INT8_MODEL_FILE}
ENSEMBLE_MARKER = "ENSEMBLE"


@dataclass(frozen=True)
class RepositoryVersion:
    repository_uri: str
    model_name: str
    version: int
    flavour: str
    max_batch_size: int
    image_size: int = 0
    precision: str = "fp32"


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
    precision: ServingPrecision = "auto",
    tensorrt_fp16: bool = False,
    instances: int = 1,
    ort_threads: int = 0,
) -> RepositoryVersion:
    """Add the trained model at `model_uri` as the next version in the repository.

    Idempotent: a model already packaged at this precision (a retried task) keeps its version.
    """
    metrics = json.loads(storage.read_text(join_uri(model_uri, "metrics.json")))
    labels = storage.read_text(join_uri(model_uri, LABELS_FILE))
    served, why = served_precision(precision, flavour, metrics)
    log.info("serving %s: %s", served.upper(), why)
    onnx_file = ONNX_FILES[served]
    if not storage.exists(join_uri(model_uri, onnx_file)):
        raise FileNotFoundError(
            f"{model_uri} has no {onnx_file}: serving_precision {precision} needs a model trained with int8"
        )
    model_dir = join_uri(repository_uri, model_name)
    source = _source_marker(model_uri, served)
    version = packaged_version(repository_uri, model_name, source)
    if version is None:
        version = max(existing_versions(repository_uri, model_name), default=0) + 1
        version_dir = join_uri(model_dir, str(version))
        storage.write_bytes(
            join_uri(version_dir, "model.onnx"), storage.read_bytes(join_uri(model_uri, onnx_file))
        )
        if flavour == "python":
            storage.write_bytes(join_uri(version_dir, "model.py"), python_backend_model())
        storage.write_text(join_uri(version_dir, SOURCE_FILE), source)  # last: the version is whole
        log.info("packaged %s as %s version %d (%s flavour)", model_uri, model_dir, version, flavour)
    else:
        log.info("%s is already version %d of %s", model_uri, version, model_dir)
    image_size, num_classes = int(metrics["image_size"]), len(metrics["labels"])
    storage.write_text(join_uri(model_dir, LABELS_FILE), labels)
    storage.write_text(
        join_uri(model_dir, "config.pbtxt"),
        config_pbtxt(
            flavour,
            model_name=model_name,
            image_size=image_size,
            num_classes=num_classes,
            max_batch_size=max_batch_size,
            tensorrt_fp16=tensorrt_fp16,
            instances=instances,
            ort_threads=ort_threads,
        ),
    )
    _write_jpeg_ensemble(repository_uri, model_name, labels, image_size, num_classes, max_batch_size)
    return RepositoryVersion(repository_uri, model_name, version, flavour, max_batch_size, image_size, served)


def served_precision(
    requested: ServingPrecision, flavour: Flavour, metrics: dict[str, Any]
) -> tuple[Precision, str]:
    """The precision to serve and why. `auto` serves the INT8 twin on a CPU server when
    training's verdict on the test split allows it (training.quantize.int8_verdict); a GPU
    server (the onnxruntime flavour, where TensorRT or CUDA run FP32) keeps FP32."""
    if requested != "auto":
        return requested, f"serving_precision {requested} was asked for"
    if flavour != "python":
        return "fp32", f"serving_precision auto keeps FP32 on a GPU server ({flavour} flavour)"
    twin = metrics.get("int8")
    if twin is None:
        return "fp32", "serving_precision auto: the model has no INT8 twin (trained with int8 false)"
    return ("int8" if twin["serve"] else "fp32"), f"serving_precision auto: {twin['why']}"


def _write_jpeg_ensemble(
    repository_uri: str, model_name: str, labels: str, image_size: int, num_classes: int, max_batch_size: int
) -> None:
    """The preprocessing model and the ensemble; rewritten each time, as the image size may change."""
    preprocess_dir = join_uri(repository_uri, preprocess_name(model_name))
    storage.write_bytes(join_uri(preprocess_dir, "1", "model.py"), preprocess_model())
    for path, source in preprocess_imports().items():
        storage.write_bytes(join_uri(preprocess_dir, "1", path), source)
    storage.write_text(
        join_uri(preprocess_dir, "config.pbtxt"),
        preprocess_config_pbtxt(model_name=model_name, image_size=image_size, max_batch_size=max_batch_size),
    )
    ensemble_dir = join_uri(repository_uri, ensemble_name(model_name))
    # An ensemble has no files, but Triton needs its version folder (and GCS has no empty folders).
    storage.write_text(join_uri(ensemble_dir, "1", ENSEMBLE_MARKER), "ensemble: see ../config.pbtxt\n")
    storage.write_text(join_uri(ensemble_dir, LABELS_FILE), labels)
    storage.write_text(
        join_uri(ensemble_dir, "config.pbtxt"),
        ensemble_config_pbtxt(model_name=model_name, num_classes=num_classes, max_batch_size=max_batch_size),
    )


def packaged_version(repository_uri: str, model_name: str, source: str) -> int | None:
    """The version already holding `source` (a model folder, at a precision), if any."""
    for version in existing_versions(repository_uri, model_name):
        marker = join_uri(repository_uri, model_name, str(version), SOURCE_FILE)
        if storage.exists(marker) and storage.read_text(marker) == source:
            return version
    return None


def _source_marker(model_uri: str, precision: Precision) -> str:
    """What source.txt says: the model folder, plus the precision when it is not FP32."""
    return model_uri if precision == "fp32" else f"{model_uri} ({precision})"


def _package_file(*parts: str) -> bytes:
    return resources.files("model_repository").joinpath(*parts).read_bytes()


def python_backend_model() -> bytes:
    """Source of the python-backend model that runs model.onnx with ONNX Runtime."""
    return _package_file("python_backend", "model.py")


def preprocess_model() -> bytes:
    """Source of the python-backend model that decodes encoded images."""
    return _package_file("preprocess", "model.py")


def preprocess_imports() -> dict[str, bytes]:
    """The package the preprocessing model imports (`from core.images import ...`), by path
    relative to its version folder, so the server decodes exactly as the client and staging do."""
    core = resources.files("core")
    return {f"core/{name}": core.joinpath(name).read_bytes() for name in PREPROCESS_IMPORTS}
