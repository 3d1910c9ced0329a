"""Figures from a confusion matrix, the same for training's evaluation and the batch report."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_figures(confusion: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision, recall and support, and the matrix itself
    (rows: the true label, columns: the predicted one)."""
    per_class = {}
    for index, label in enumerate(labels):
        true_positive = confusion[index, index]
        predicted_count = confusion[:, index].sum()
        actual_count = confusion[index, :].sum()
        per_class[label] = {
            "precision": round(float(true_positive / predicted_count), 4) if predicted_count else 0.0,
            "recall": round(float(true_positive / actual_count), 4) if actual_count else 0.0,
            "support": int(actual_count),
        }
    total = int(confusion.sum())
    return {
        "accuracy": round(float(np.trace(confusion) / total), 4) if total else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "rows_true_columns_predicted": confusion.tolist()},
        "examples": total,
    }
