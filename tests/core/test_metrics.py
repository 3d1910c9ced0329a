from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.metrics import calibration, classification_metrics, discordant, mcnemar_p, roc_auc, wilson_interval


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


def test_wilson_interval_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17, table I: 81 of 263 -> 0.2553 to 0.3662.
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


def test_wilson_interval_near_100_percent_stays_below_one() -> None:
    low, high = wilson_interval(198, 198)
    assert high == 1.0
    assert 0.98 < low < 0.99  # the normal approximation would claim [1, 1]
    low, high = wilson_interval(194, 198)
    assert (round(low, 3), round(high, 3)) == (0.949, 0.992)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_holds_the_observed_share(counts: tuple[int, int]) -> None:
    successes, trials = counts
    low, high = wilson_interval(successes, trials)
    assert 0 <= low <= successes / trials <= high <= 1


def test_log_loss_and_calibration_of_known_probabilities() -> None:
    y_true = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    metrics = classification_metrics(y_true, probabilities, ["cat", "dog"])
    expected = -(math.log(0.9) + math.log(0.6) + math.log(0.7) + math.log(0.2)) / 4
    assert metrics["log_loss"] == pytest.approx(expected, abs=1e-4)
    # Confidences 0.9 (right), 0.6 (right), 0.7 (right), 0.8 (wrong): bins 0.6, 0.7, 0.8, 0.9.
    assert metrics["calibration"]["ece"] == pytest.approx((0.1 + 0.4 + 0.3 + 0.8) / 4, abs=1e-4)
    assert [row["images"] for row in metrics["calibration"]["bins"]] == [1, 1, 1, 1]
    assert metrics["accuracy_95ci"] == [round(b, 4) for b in wilson_interval(3, 4)]


def test_a_confidently_wrong_image_keeps_log_loss_finite() -> None:
    metrics = classification_metrics(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]]), ["a", "b"])
    assert math.isfinite(metrics["log_loss"])
    assert metrics["log_loss"] == pytest.approx(-math.log(1e-7) / 2, abs=1e-3)


def test_calibration_of_a_calibrated_model_is_near_zero() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 200_000)
    correct = rng.uniform(size=confidence.size) < confidence
    assert calibration(confidence, correct)["ece"] < 0.005
    assert calibration(confidence, np.ones_like(correct))["ece"] == pytest.approx(0.25, abs=0.005)


def test_a_single_class_has_no_roc_auc() -> None:
    metrics = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), ["cat", "dog"])
    assert metrics["roc_auc"] is None
    assert metrics["accuracy"] == 0.5


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_images() -> None:
    # 1 vs 9 discordant: 2 * (1 + 10) / 2**10 (scipy.stats.binomtest(1, 10).pvalue = 0.021484375).
    assert mcnemar_p(1, 9) == pytest.approx(0.021484375)
    assert mcnemar_p(9, 1) == mcnemar_p(1, 9)
    assert mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 0) == 1.0, "no discordant image: no evidence of a difference"
    # Beyond 1,030 discordant images a float binomial coefficient overflows; this stays exact.
    assert mcnemar_p(500, 600) == pytest.approx(0.0028195449914364284)  # scipy binomtest(500, 1100)


def test_discordant_counts_the_images_only_one_model_got_right() -> None:
    right = np.array([True, True, False, False, True])
    reference = np.array([True, False, True, False, False])
    assert discordant(right, reference) == (2, 1)
    assert discordant(reference, right) == (1, 2)
    assert discordant(right, right) == (0, 0), "agreeing on every image: nothing discordant"
