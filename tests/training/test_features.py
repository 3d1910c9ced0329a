"""The frozen part's outputs, computed once, feed every epoch as the images would have."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from training.features import frozen_outputs, training_views, view_batches
from training.models import build_classifier

IMAGES = np.random.default_rng(0).integers(0, 255, (10, 40, 40, 3), dtype=np.uint8)
TARGETS = np.arange(10, dtype=np.float32)[:, None]


def _batches(batch_size: int = 4) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((IMAGES, TARGETS)).batch(batch_size)


def test_the_frozen_outputs_are_what_the_whole_model_computes_inside() -> None:
    classifier = build_classifier("efficientnet_lite0", 40, 2, top_blocks=8)
    outputs = frozen_outputs(classifier.frozen, _batches(), len(IMAGES))
    assert outputs.dtype == np.float16
    assert outputs.shape == (10, *classifier.frozen.output_shape[1:])
    expected = np.asarray(classifier.frozen(IMAGES, training=False))
    np.testing.assert_allclose(outputs, expected, rtol=2e-3, atol=2e-3)  # float16's precision
    logits = np.asarray(classifier.trainable(outputs.astype(np.float32), training=False))
    np.testing.assert_allclose(logits, np.asarray(classifier.whole()(IMAGES)), rtol=1e-2, atol=1e-2)


def test_augmented_copies_differ_from_the_image_and_from_each_other() -> None:
    keras.utils.set_random_seed(0)
    frozen = build_classifier("small", 40, 2).frozen
    views = training_views(frozen, _batches(), len(IMAGES), augmented_copies=2, seed=0)
    assert len(views) == 3
    np.testing.assert_allclose(views[0], IMAGES / 255, atol=1e-3)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not np.allclose(views[a], views[b], atol=1e-2), (a, b)


def test_validation_batches_keep_order_and_the_image_s_own_view() -> None:
    views = [np.arange(10, dtype=np.float16)[:, None] * 10 + index for index in range(3)]
    rows = np.concatenate([x for x, _ in view_batches(views, TARGETS, 4)])
    np.testing.assert_array_equal(rows, views[0])
    targets = np.concatenate([y for _, y in view_batches(views, TARGETS, 4)])
    np.testing.assert_array_equal(targets, TARGETS)


def test_each_epoch_shuffles_and_draws_one_view_per_image() -> None:
    """Row r of view v holds 10 * image + v: each batch row says which image and view it is."""
    views = [np.arange(10, dtype=np.float16)[:, None] * 10 + index for index in range(2)]
    dataset = view_batches(views, TARGETS, 4, seed=3)
    assert int(dataset.cardinality()) == 3
    epochs = []
    for _ in range(4):
        rows = np.concatenate([x for x, _ in dataset])[:, 0]
        images, picked = np.divmod(rows.astype(int), 10)
        assert sorted(images) == list(range(10)), "every image once an epoch"
        epochs.append((tuple(images), tuple(picked)))
    orders = {order for order, _ in epochs}
    assert len(orders) > 1, "reshuffled between epochs"
    assert {pick for _, picks in epochs for pick in picks} == {0, 1}, "both views are drawn"


def test_each_row_keeps_its_own_target() -> None:
    views = [np.arange(10, dtype=np.float16)[:, None]]
    for rows, targets in view_batches(views, TARGETS, 3, seed=1):
        np.testing.assert_array_equal(np.asarray(rows), np.asarray(targets))
