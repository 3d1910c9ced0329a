"""Classification figures, the same for training's evaluation and the batch report.

Plain numpy (no scikit-learn). Every figure a reviewer needs to trust an accuracy:
the accuracy with its 95% interval (Wilson's, which stays inside [0, 1] near 100%),
log-loss, ROC AUC (one-vs-rest, macro-averaged beyond two classes), calibration
(expected calibration error over the top label's confidence, and the bins of a
reliability diagram), per-class precision and recall, and the confusion matrix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z_95 = 1.959964  # the standard normal's 97.5% quantile
CALIBRATION_BINS = 10
# Probabilities are clipped here before the log: one confidently wrong image must not make log-loss infinite.
LOG_LOSS_FLOOR = 1e-7


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """Figures for images of known class; `probabilities` has one column per label, in `labels` order."""
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(confusion, (y_true, predicted), 1)
    figures = confusion_figures(confusion, labels)
    correct = predicted == y_true
    true_probability = probabilities[np.arange(len(y_true)), y_true]
    return {
        **figures,
        "accuracy_95ci": [round(bound, 4) for bound in wilson_interval(int(correct.sum()), len(y_true))],
        "log_loss": round(float(-np.log(np.clip(true_probability, LOG_LOSS_FLOOR, 1.0)).mean()), 4),
        "roc_auc": _macro_roc_auc(y_true, probabilities),
        "calibration": calibration(probabilities.max(axis=1), correct),
    }


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


def allowed_loss(share: float, examples: int) -> float:
    """The accuracy a model may lose against another on the same `examples` images and still
    count as no worse: `share`, or one image, whichever is larger (one image is noise)."""
    return max(share, 1 / examples)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: at 194 of 198 right it is 94.9%-99.2%, where
    the normal approximation would claim up to 99.9%."""
    if trials <= 0:
        raise ValueError("an interval needs at least one trial")
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    # At none or all right the bound is exactly 0 or 1; the formula leaves rounding dust there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def discordant(right: np.ndarray, reference_right: np.ndarray) -> tuple[int, int]:
    """Two models' per-image correctness on the same images: how many only the first got right,
    and how many only the reference did (the counts `mcnemar_p` judges)."""
    right, reference_right = np.asarray(right, dtype=bool), np.asarray(reference_right, dtype=bool)
    return int((right & ~reference_right).sum()), int((reference_right & ~right).sum())


def mcnemar_p(only_first_right: int, only_second_right: int) -> float:
    """Two models on the same images: the exact two-sided McNemar p-value that their accuracies
    differ, from the images only one of them got right (those both got right or wrong say nothing).
    Paired, it sees a difference that two overlapping intervals hide."""
    discordant = only_first_right + only_second_right
    tail = sum(math.comb(discordant, k) for k in range(min(only_first_right, only_second_right) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error (the images-weighted gap between confidence and accuracy,
    over equal-width confidence bins) and each non-empty bin, for a reliability diagram."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    # Rounded first: 0.7 stored as float32 is 0.69999999, and must not fall into the 0.6 bin.
    index = np.minimum(np.floor(np.round(confidence * bins, 5)).astype(int), bins - 1)
    rows, gap = [], 0.0
    for position in range(bins):
        members = index == position
        count = int(members.sum())
        if not count:
            continue
        mean_confidence, accuracy = float(confidence[members].mean()), float(correct[members].mean())
        gap += count * abs(accuracy - mean_confidence)
        rows.append(
            {
                "from": position / bins,
                "to": (position + 1) / bins,
                "images": count,
                "confidence": round(mean_confidence, 4),
                "accuracy": round(accuracy, 4),
            }
        )
    return {"ece": round(gap / max(len(confidence), 1), 4), "bins": rows}


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


def _macro_roc_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """The second class's AUC for two classes, else the mean one-vs-rest AUC over the classes
    present; None when the images hold a single class (a folder of cats has no ROC curve)."""
    classes = probabilities.shape[1]
    candidates = [1] if classes == 2 else range(classes)
    areas = [
        roc_auc(y_true == c, probabilities[:, c]) for c in candidates if 0 < (y_true == c).sum() < len(y_true)
    ]
    return round(float(np.mean(areas)), 4) if areas else None
