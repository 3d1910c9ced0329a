from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from core.settings import Precision
from harness.data import fake_model
from model_repository.config import Flavour, config_pbtxt, preferred_batch_sizes
from model_repository.repository import (
    existing_versions,
    package_model,
    preprocess_imports,
    preprocess_model,
    python_backend_model,
    served_precision,
)


def parsed(config_pbtxt: str) -> pb.ModelConfig:
    """A config.pbtxt read back through Triton's schema: an unknown field fails here."""
    return text_format.Parse(config_pbtxt, pb.ModelConfig())


def test_python_flavour_is_the_python_backend_with_the_model_file(tmp_path: Path) -> None:
    model_uri = fake_model(tmp_path / "model")
    repository = tmp_path / "repo"
    version = package_model(
        model_uri, str(repository), flavour="python", model_name="dogs_cats", max_batch_size=16
    )
    assert version.version == 1
    model_dir = repository / "dogs_cats"
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (model_dir / "1" / "model.py").read_bytes() == python_backend_model()
    assert (model_dir / "labels.txt").read_text() == "cat\ndog\n"
    config = parsed((model_dir / "config.pbtxt").read_text())
    assert config.backend == "python"
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [32, 32, 3]
    assert list(config.output[0].dims) == [2]


@pytest.mark.parametrize(("limit", "preferred"), [(32, [8]), (8, [8]), (4, [4])])
def test_a_cpu_instance_batches_up_to_one_cpu_batch_and_never_waits(limit: int, preferred: list[int]) -> None:
    """Two queued requests of 8 must go to two idle CPU instances, not merged onto one."""
    config = parsed(
        config_pbtxt("python", model_name="m", image_size=8, num_classes=2, max_batch_size=limit, instances=2)
    )
    assert list(config.dynamic_batching.preferred_batch_size) == preferred
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert config.HasField("dynamic_batching"), "small requests are still merged"


def test_versions_grow_and_earlier_ones_stay(tmp_path: Path) -> None:
    repository = str(tmp_path / "repo")
    for expected in (1, 2, 3):
        model_uri = fake_model(tmp_path / f"model{expected}")
        version = package_model(
            model_uri, repository, flavour="onnxruntime", model_name="m", max_batch_size=8
        )
        assert version.version == expected
        assert (tmp_path / "repo" / "m" / str(expected) / "source.txt").read_text() == model_uri
    assert existing_versions(repository, "m") == [1, 2, 3]
    assert not (tmp_path / "repo" / "m" / "3" / "model.py").exists()


def test_packaging_the_same_model_again_keeps_its_version(tmp_path: Path) -> None:
    first, second = fake_model(tmp_path / "a"), fake_model(tmp_path / "b")
    repository = str(tmp_path / "repo")
    assert package_model(first, repository, flavour="python", model_name="m", max_batch_size=8).version == 1
    assert package_model(second, repository, flavour="python", model_name="m", max_batch_size=8).version == 2
    retried = package_model(first, repository, flavour="python", model_name="m", max_batch_size=8)
    assert retried.version == 1, "a retried task does not add a version"
    assert existing_versions(repository, "m") == [1, 2]


def test_cluster_flavour_uses_the_onnxruntime_platform() -> None:
    text = config_pbtxt(
        "onnxruntime", model_name="dogs_cats", image_size=180, num_classes=2, max_batch_size=32
    )
    config = parsed(text)
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert config.output[0].label_filename == "labels.txt"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32]
    assert "tensorrt" not in text


def test_tensorrt_fp16_is_a_switch_for_the_gpu_flavour_only() -> None:
    config = parsed(
        config_pbtxt(
            "onnxruntime", model_name="m", image_size=180, num_classes=2, max_batch_size=8, tensorrt_fp16=True
        )
    )
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    with pytest.raises(ValueError, match="TensorRT FP16 needs the onnxruntime flavour"):
        config_pbtxt(
            "python", model_name="m", image_size=8, num_classes=2, max_batch_size=8, tensorrt_fp16=True
        )


@pytest.mark.parametrize(
    ("limit", "sizes"),
    [(1, [1]), (4, [4]), (6, [4, 6]), (32, [4, 8, 16, 32]), (100, [4, 8, 16, 32, 64, 100])],
)
def test_preferred_batch_sizes_never_pass_the_limit(limit: int, sizes: list[int]) -> None:
    assert preferred_batch_sizes(limit) == sizes


def test_the_jpeg_ensemble_is_packaged_beside_the_classifier(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    package_model(
        fake_model(tmp_path / "model", image_size=64),
        str(repository),
        flavour="onnxruntime",
        model_name="dogs_cats",
        max_batch_size=8,
    )
    preprocess = repository / "dogs_cats_preprocess"
    assert (preprocess / "1" / "model.py").read_bytes() == preprocess_model()
    shipped = preprocess_imports()
    assert "core/images.py" in shipped, "the module preprocess/model.py imports"
    for path, source in shipped.items():
        assert (preprocess / "1" / path).read_bytes() == source
    assert list(parsed((preprocess / "config.pbtxt").read_text()).output[0].dims) == [64, 64, 3]
    ensemble = parsed((repository / "dogs_cats_jpeg" / "config.pbtxt").read_text())
    assert ensemble.platform == "ensemble"
    steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
    assert steps == ["dogs_cats_preprocess", "dogs_cats"]
    assert (repository / "dogs_cats_jpeg" / "1").is_dir()
    assert (repository / "dogs_cats_jpeg" / "labels.txt").read_text() == "cat\ndog\n"


def test_missing_model_files_fail_before_writing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        package_model(
            str(tmp_path / "nothing"),
            str(tmp_path / "repo"),
            flavour="python",
            model_name="m",
            max_batch_size=8,
        )
    assert not (tmp_path / "repo").exists()


def test_the_instance_and_thread_settings_reach_each_backend_by_its_own_parameter_name() -> None:
    python = parsed(config_pbtxt("python", model_name="m", image_size=8, num_classes=2, max_batch_size=8,
                                 instances=2, ort_threads=1))  # fmt: skip
    assert python.instance_group[0].count == 2
    assert python.parameters["intra_op_threads"].string_value == "1"
    onnx = parsed(config_pbtxt("onnxruntime", model_name="m", image_size=8, num_classes=2, max_batch_size=8,
                               ort_threads=3))  # fmt: skip
    assert onnx.parameters["intra_op_thread_count"].string_value == "3"


def test_int8_serves_the_twin_and_is_a_version_of_its_own(tmp_path: Path) -> None:
    model_uri = fake_model(tmp_path / "model")
    (tmp_path / "model" / "model.int8.onnx").write_bytes(b"int8-bytes")
    repository = str(tmp_path / "repo")
    fp32 = package_model(model_uri, repository, flavour="python", model_name="m", max_batch_size=8)
    int8 = package_model(
        model_uri, repository, flavour="python", model_name="m", max_batch_size=8, precision="int8"
    )
    assert (fp32.version, int8.version) == (1, 2)
    assert (tmp_path / "repo" / "m" / "2" / "model.onnx").read_bytes() == b"int8-bytes"
    again = package_model(
        model_uri, repository, flavour="python", model_name="m", max_batch_size=8, precision="int8"
    )
    assert again.version == 2, "a retried int8 packaging keeps its version"


def test_int8_without_a_twin_is_refused_before_writing(tmp_path: Path) -> None:
    model_uri = fake_model(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match=r"has no model\.int8\.onnx: serving_precision int8"):
        package_model(model_uri, str(tmp_path / "repo"), flavour="python", model_name="m", max_batch_size=8,
                      precision="int8")  # fmt: skip
    assert not (tmp_path / "repo").exists()


def test_what_the_preprocessing_model_ships_imports_nothing_it_lacks() -> None:
    """Inside Triton there is no project: only the shipped files, the standard library and the
    serving image's packages (a core/images.py importing an unshipped core/errors.py once
    failed every CPU Triton pod on the cluster, while the local server, in the venv, loaded)."""
    shipped = preprocess_imports()
    available = {"numpy", "PIL", "triton_python_backend_utils", *sys.stdlib_module_names}
    for path, code in {**shipped, "model.py": preprocess_model()}.items():
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module.startswith("core."):
                    assert f"core/{module.split('.')[1]}.py" in shipped, (path, module)
                else:
                    assert module.split(".")[0] in available, (path, module)


@pytest.mark.parametrize(
    ("requested", "flavour", "twin", "served"),
    [
        ("auto", "python", {"serve": True, "why": "INT8 may be served: ..."}, "int8"),
        ("auto", "python", {"serve": False, "why": "FP32 is served: ..."}, "fp32"),
        ("auto", "python", None, "fp32"),  # trained with int8 false
        ("auto", "onnxruntime", {"serve": True, "why": "INT8 may be served: ..."}, "fp32"),  # a GPU server
        ("fp32", "python", {"serve": True, "why": "INT8 may be served: ..."}, "fp32"),
        ("int8", "onnxruntime", {"serve": False, "why": "FP32 is served: ..."}, "int8"),
    ],
)
def test_auto_serves_int8_on_a_cpu_server_when_training_s_verdict_allows(
    requested: Precision | Literal["auto"], flavour: Flavour, twin: dict[str, Any] | None, served: str
) -> None:
    metrics = {"int8": twin} if twin else {}
    precision, why = served_precision(requested, flavour, metrics)
    assert precision == served
    if requested == "auto" and twin and flavour == "python":
        assert why == f"serving_precision auto: {twin['why']}"


def test_auto_packages_the_twin_the_verdict_allows_and_says_so(tmp_path: Path) -> None:
    model_uri = fake_model(tmp_path / "model")
    (tmp_path / "model" / "model.int8.onnx").write_bytes(b"int8-bytes")
    metrics_file = tmp_path / "model" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "int8": {"serve": True, "why": "INT8 may be served: ok"}}))
    version = package_model(
        model_uri, str(tmp_path / "repo"), flavour="python", model_name="m", max_batch_size=8
    )
    assert version.precision == "int8"
    assert (tmp_path / "repo" / "m" / "1" / "model.onnx").read_bytes() == b"int8-bytes"
