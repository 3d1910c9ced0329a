from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repository import (
    config_pbtxt,
    decode_module,
    preferred_batch_sizes,
    preprocess_model,
    python_backend_model,
)
from model_repository.repository import existing_versions, package_model


def fake_model(folder: Path, image_size: int = 32) -> str:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx-bytes")
    (folder / "labels.txt").write_text("cat\ndog\n")
    (folder / "metrics.json").write_text(json.dumps({"image_size": image_size, "labels": ["cat", "dog"]}))
    return str(folder)


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
    config = (model_dir / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    assert "max_batch_size: 16" in config
    assert "dims: [ 32, 32, 3 ]" in config
    assert "dims: [ 2 ]" in config


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
    config = config_pbtxt(
        "onnxruntime", model_name="dogs_cats", image_size=180, num_classes=2, max_batch_size=32
    )
    assert 'platform: "onnxruntime_onnx"' in config
    assert "kind: KIND_GPU" in config
    assert 'label_filename: "labels.txt"' in config
    assert "preferred_batch_size: [ 4, 8, 16, 32 ]" in config
    assert "tensorrt" not in config


def test_tensorrt_fp16_is_a_switch_for_the_gpu_flavour_only() -> None:
    config = config_pbtxt(
        "onnxruntime", model_name="m", image_size=180, num_classes=2, max_batch_size=8, tensorrt_fp16=True
    )
    assert 'name: "tensorrt"' in config
    assert 'parameters { key: "precision_mode" value: "FP16" }' in config
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
    assert (preprocess / "1" / "images.py").read_bytes() == decode_module()
    assert "dims: [ 64, 64, 3 ]" in (preprocess / "config.pbtxt").read_text()
    ensemble = (repository / "dogs_cats_jpeg" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ensemble
    assert 'model_name: "dogs_cats_preprocess"' in ensemble
    assert 'model_name: "dogs_cats"' in ensemble
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
