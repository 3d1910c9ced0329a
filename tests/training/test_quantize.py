"""The INT8 verdict: when the twin may be served in FP32's place."""

from __future__ import annotations

import numpy as np
import pytest

from training.quantize import int8_verdict


def _probabilities(labels: list[int]) -> np.ndarray:
    return np.eye(2)[labels] * 0.8 + 0.1


def _case(images: int, fp32_wrong: int, int8_wrong: int, disagree: int) -> tuple[np.ndarray, ...]:
    """`images` of class 0; FP32 gets the first `fp32_wrong` wrong, INT8 its first
    `int8_wrong`, and the two differ on `disagree` images."""
    y_true = np.zeros(images, dtype=int)
    fp32 = [1 if i < fp32_wrong else 0 for i in range(images)]
    int8 = [1 if i < int8_wrong else 0 for i in range(images)]
    assert sum(a != b for a, b in zip(fp32, int8, strict=True)) == disagree
    return y_true, _probabilities(fp32), _probabilities(int8)


@pytest.mark.parametrize(
    ("images", "fp32_wrong", "int8_wrong", "serve"),
    [
        (1000, 10, 10, True),  # the same labels
        (1000, 10, 15, True),  # 5 fewer right: 0.5 points exactly, 99.5% agreement
        (1000, 10, 16, False),  # 6 fewer right: beyond 0.5 points
        (100, 1, 2, True),  # 1 image is more than 0.5 points of 100: one image is allowed
        (100, 1, 3, False),  # 2 images at 100: beyond both, and 98% agreement
    ],
)
def test_int8_is_served_when_it_loses_at_most_half_a_point_or_one_image(
    images: int, fp32_wrong: int, int8_wrong: int, serve: bool
) -> None:
    verdict = int8_verdict(*_case(images, fp32_wrong, int8_wrong, int8_wrong - fp32_wrong))
    assert verdict["serve"] is serve, verdict["why"]
    assert verdict["images_lost"] == int8_wrong - fp32_wrong
    assert verdict["why"].startswith("INT8 may be served" if serve else "FP32 is served")


def test_int8_that_disagrees_on_more_than_one_percent_is_not_served_even_at_equal_accuracy() -> None:
    y_true = np.zeros(100, dtype=int)
    fp32 = _probabilities([1] * 10 + [0] * 90)
    int8 = _probabilities([0] * 10 + [1] * 10 + [0] * 80)  # as many right, 20 labels changed
    verdict = int8_verdict(y_true, fp32, int8)
    assert verdict["images_lost"] == 0
    assert verdict["agreement"] == 0.8
    assert not verdict["serve"]
    assert verdict["why"] == (
        "FP32 is served: on 100 test images INT8 gives FP32's label to 80.00% (at least 99% needed) "
        "and gets 0 fewer right (at most 1 fewer allowed: 0.5 points or one image)"
    )
