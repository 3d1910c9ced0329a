from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.metrics import classification_metrics
from training.evaluate import gate_reason, save_charts


def test_gate_reads_the_test_split_and_says_why_in_plain_words() -> None:
    metrics = {
        "validation": {"accuracy": 0.99},  # chose the epoch: never what the gate reads
        "test": {"accuracy": 0.8123, "accuracy_95ci": [0.78, 0.84], "examples": 600},
    }
    assert gate_reason(metrics, 0.8) is None
    reason = gate_reason(metrics, 0.9)
    assert reason == (
        "test accuracy 81.23% (95% interval 78.00%-84.00%, 600 images) is under the required 90.00% "
        "(min_test_accuracy): the model is kept in the bucket but not packaged or deployed"
    )


def test_charts_are_real_pngs(tmp_path: Path) -> None:
    history: dict[str, list[float]] = {
        "epoch": [1, 2],
        "loss": [0.7, 0.5],
        "val_loss": [0.69, 0.6],
        "accuracy": [0.5, 0.7],
        "val_accuracy": [0.5, 0.6],
    }
    metrics = classification_metrics(np.array([0, 1]), np.array([[0.7, 0.3], [0.2, 0.8]]), ["cat", "dog"])
    charts = save_charts(history, metrics, tmp_path)
    assert [c.name for c in charts] == ["training_curves.png", "confusion_matrix.png", "reliability.png"]
    for chart in charts:
        with Image.open(chart) as image:
            assert image.format == "PNG"
            assert image.width > 300
