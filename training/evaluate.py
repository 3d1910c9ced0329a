"""Training's charts and the quality gate, which reads the test split.

The figures themselves are `core.metrics` (shared with the batch report); the
charts are PNGs from matplotlib's non-interactive backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core import storage
from core.settings import join_uri


def gate_reason(metrics: dict[str, Any], min_test_accuracy: float) -> str | None:
    """Why the model must not be packaged, in plain words, or None when it passes. It reads
    the test split, which chose nothing: validation chose the epoch, so its figure flatters."""
    test = metrics["test"]
    if test["accuracy"] < min_test_accuracy:
        low, high = test["accuracy_95ci"]
        return (
            f"test accuracy {test['accuracy']:.2%} (95% interval {low:.2%}-{high:.2%}, "
            f"{test['examples']} images) is under the required {min_test_accuracy:.2%} "
            "(min_test_accuracy): the model is kept in the bucket but not packaged or deployed"
        )
    return None


def model_gate_reason(model_uri: str, min_test_accuracy: float) -> str | None:
    """`gate_reason` for the model folder at `model_uri` (reads its metrics.json)."""
    return gate_reason(json.loads(storage.read_text(join_uri(model_uri, "metrics.json"))), min_test_accuracy)


def save_charts(history: dict[str, list[float]], metrics: dict[str, Any], folder: Path) -> list[Path]:
    """training_curves.png, and for the split `metrics` describe (the test split),
    confusion_matrix.png and reliability.png, in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history["epoch"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, history.get(key, []), marker="o", label="train")
        axis.plot(epochs, history.get(f"val_{key}", []), marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.legend()
    figure.tight_layout()
    curves = folder / "training_curves.png"
    figure.savefig(curves, dpi=100)
    plt.close(figure)

    matrix = np.array(metrics["confusion_matrix"]["rows_true_columns_predicted"])
    labels = metrics["confusion_matrix"]["labels"]
    figure, axis = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center")
    low, high = metrics["accuracy_95ci"]
    axis.set_title(f"test accuracy {metrics['accuracy']:.1%} ({low:.1%}-{high:.1%})")
    figure.tight_layout()
    confusion = folder / "confusion_matrix.png"
    figure.savefig(confusion, dpi=100)
    plt.close(figure)

    bins = metrics["calibration"]["bins"]
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axis.bar(
        [row["from"] for row in bins],
        [row["accuracy"] for row in bins],
        width=[row["to"] - row["from"] for row in bins],
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy in the bin",
    )
    axis.plot([row["confidence"] for row in bins], [row["accuracy"] for row in bins], "o", color="black")
    axis.set_xlabel("confidence of the top label")
    axis.set_ylabel("accuracy")
    axis.set_title(f"reliability (ECE {metrics['calibration']['ece']:.3f})")
    axis.legend(loc="upper left")
    figure.tight_layout()
    reliability = folder / "reliability.png"
    figure.savefig(reliability, dpi=100)
    plt.close(figure)
    return [curves, confusion, reliability]
