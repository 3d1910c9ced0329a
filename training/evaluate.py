"""Evaluation on the validation split: the figures, the charts, the quality gate.

Plain numpy (no scikit-learn): accuracy, per-class precision and recall,
ROC AUC (one-vs-rest, macro-averaged beyond two classes) and the confusion
matrix; PNG charts with matplotlib's non-interactive backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core import storage
from core.metrics import confusion_figures
from core.settings import join_uri


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """Figures for a validation set; `probabilities` has one column per label."""
    predicted = probabilities.argmax(axis=1)
    classes = len(labels)
    confusion = np.zeros((classes, classes), dtype=int)
    np.add.at(confusion, (y_true, predicted), 1)
    if classes == 2:
        auc = roc_auc(y_true == 1, probabilities[:, 1])
    else:
        auc = float(np.mean([roc_auc(y_true == c, probabilities[:, c]) for c in range(classes)]))
    return {**confusion_figures(confusion, labels), "roc_auc": round(auc, 4)}


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative."""
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if not n_positive or not n_negative:
        raise ValueError("ROC AUC needs both positive and negative examples")
    order = scores.argsort()
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # ties share their average rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def gate_reason(metrics: dict[str, Any], min_val_accuracy: float) -> str | None:
    """Why the model must not be packaged, in plain words, or None when it passes."""
    accuracy = metrics["evaluation"]["accuracy"]
    if accuracy < min_val_accuracy:
        return (
            f"validation accuracy {accuracy:.2%} is under the required {min_val_accuracy:.2%} "
            "(min_val_accuracy): the model is kept in the bucket but not packaged or deployed"
        )
    return None


def model_gate_reason(model_uri: str, min_val_accuracy: float) -> str | None:
    """`gate_reason` for the model folder at `model_uri` (reads its metrics.json)."""
    return gate_reason(json.loads(storage.read_text(join_uri(model_uri, "metrics.json"))), min_val_accuracy)


def save_charts(history: dict[str, list[float]], metrics: dict[str, Any], folder: Path) -> list[Path]:
    """training_curves.png and confusion_matrix.png in `folder`."""
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
    axis.set_title(f"accuracy {metrics['accuracy']:.1%}")
    figure.tight_layout()
    confusion = folder / "confusion_matrix.png"
    figure.savefig(confusion, dpi=100)
    plt.close(figure)
    return [curves, confusion]
