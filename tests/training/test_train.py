from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.integration
def test_training_writes_a_servable_model_folder(trained_model: str) -> None:
    import tensorflow as tf

    folder = Path(trained_model)
    assert sorted(p.name for p in folder.iterdir()) == [
        "labels.txt",
        "metrics.json",
        "model.onnx",
        "saved_model",
    ]
    assert (folder / "labels.txt").read_text() == "cat\ndog\n"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["labels"] == ["cat", "dog"]
    assert len(metrics["history"]["loss"]) == 2
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["onnx_max_abs_difference"] <= 1e-4

    signature = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8
    assert spec.shape.as_list() == [None, 32, 32, 3]
    probabilities = signature(image=tf.zeros([3, 32, 32, 3], tf.uint8))["probabilities"].numpy()
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.integration
def test_training_cli_fails_clearly_without_a_staged_dataset(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "train", "--dataset-uri", str(tmp_path / "none"),
         "--output-uri", str(tmp_path / "model"), "--image-size", "32"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "manifest.json" in result.stderr
    assert not (tmp_path / "model").exists()
