from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.evaluate import classification_metrics, gate_reason, roc_auc, save_charts


def test_roc_auc_counts_correctly_ordered_pairs() -> None:
    positive = np.array([True, True, False, False, True])
    scores = np.array([0.9, 0.4, 0.5, 0.1, 0.8])
    # Positives 0.9, 0.4, 0.8 vs negatives 0.5, 0.1: 5 of 6 pairs ordered right.
    assert roc_auc(positive, scores) == pytest.approx(5 / 6)
    assert roc_auc(positive, np.full(5, 0.5)) == pytest.approx(0.5), "ties count half"
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(3, bool), np.ones(3))


def test_binary_metrics() -> None:
    y_true = np.array([0, 0, 1, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    metrics = classification_metrics(y_true, probabilities, ["cat", "dog"])
    assert metrics["accuracy"] == 0.6
    assert metrics["confusion_matrix"]["rows_true_columns_predicted"] == [[1, 1], [1, 2]]
    assert metrics["per_class"]["dog"] == {"precision": 0.6667, "recall": 0.6667, "support": 3}
    assert metrics["per_class"]["cat"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    # dog scores 0.8, 0.7, 0.4 against cat scores 0.1, 0.6: 5 of 6 pairs ordered right.
    assert metrics["roc_auc"] == pytest.approx(5 / 6, abs=1e-4)


def test_three_classes_use_macro_one_vs_rest_auc() -> None:
    y_true = np.array([0, 1, 2, 2])
    probabilities = np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.2 / 3
    metrics = classification_metrics(y_true, probabilities, ["a", "b", "c"])
    assert metrics["accuracy"] == 1.0
    assert metrics["roc_auc"] == 1.0
    assert metrics["per_class"]["c"]["support"] == 2


def test_gate_says_why_in_plain_words() -> None:
    metrics = {"evaluation": {"accuracy": 0.8123}}
    assert gate_reason(metrics, 0.8) is None
    reason = gate_reason(metrics, 1.01)
    assert reason == (
        "validation accuracy 81.23% is under the required 101.00% (min_val_accuracy): "
        "the model is kept in the bucket but not packaged or deployed"
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
    assert [c.name for c in charts] == ["training_curves.png", "confusion_matrix.png"]
    for chart in charts:
        with Image.open(chart) as image:
            assert image.format == "PNG"
            assert image.width > 300
