"""The frozen part's outputs, computed once per training image: what every epoch reads.

A classifier's frozen part (the input's scaling and, for a pretrained backbone, its bottom
blocks: `training.models.Classifier`) never changes while it trains, yet a model fit on images
runs it again on every image of every epoch (a Lite1 fine-tuning epoch on the whole cats vs
dogs set took 528-585 s that way, 267-310 s this way: benchmarks/README.md). Here it runs
once per view of each image. The views are the image itself and `augmented_copies` copies
randomly flipped and rotated (drawn once); each epoch draws one view per image, so
augmentation is kept, from a fixed pool. They are held in memory as float16 (the log says
how much).
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


def augmentation(seed: int) -> keras.Sequential:
    return keras.Sequential(
        [keras.layers.RandomFlip("horizontal", seed=seed), keras.layers.RandomRotation(0.1, seed=seed)]
    )


def frozen_outputs(
    frozen: keras.Model, batches: tf.data.Dataset, count: int, augment: keras.Sequential | None = None
) -> np.ndarray:
    """`frozen`'s outputs (float16) for the `count` uint8 images of `batches` ((images, targets)
    batches), each first augmented if `augment`."""
    outputs = np.empty((count, *frozen.output_shape[1:]), np.float16)
    run = tf.function(lambda images: frozen(images, training=False), reduce_retracing=True)
    start = 0
    for images, _ in batches:
        if augment is not None:
            images = to_uint8(augment(tf.cast(images, tf.float32), training=True))
        outputs[start : start + len(images)] = run(images)
        start += len(images)
    if start != count:
        raise ValueError(f"expected {count} images, got {start}")
    return outputs


def training_views(
    frozen: keras.Model, batches: tf.data.Dataset, count: int, augmented_copies: int, seed: int
) -> list[np.ndarray]:
    """The frozen outputs of each training image and of its augmented copies (one array each)."""
    started = time.monotonic()
    augment = augmentation(seed)
    views = [frozen_outputs(frozen, batches, count)]
    views += [frozen_outputs(frozen, batches, count, augment) for _ in range(augmented_copies)]
    log.info(
        "frozen part run once on %d training images x %d views in %.0f s: %.0f MB held for every epoch",
        count, len(views), time.monotonic() - started, sum(view.nbytes for view in views) / 1e6,
    )  # fmt: skip
    return views


def view_batches(
    views: list[np.ndarray], targets: np.ndarray, batch_size: int, *, seed: int | None = None
) -> tf.data.Dataset:
    """(frozen output, target) batches. With a seed: reshuffled every epoch, each image's view
    drawn at random; without: in order, the first view (for validation)."""
    count = len(targets)
    rng = np.random.default_rng(seed)

    def gather(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        picks = np.zeros(len(indices), int) if seed is None else rng.integers(len(views), size=len(indices))
        rows = np.stack([views[pick][index] for pick, index in zip(picks, indices, strict=True)])
        return rows.astype(np.float32), targets[indices]

    def load(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        rows, batch_targets = tf.numpy_function(
            gather, [indices], (tf.float32, tf.as_dtype(targets.dtype)), stateful=True
        )
        rows.set_shape((None, *views[0].shape[1:]))
        batch_targets.set_shape((None, *targets.shape[1:]))
        return rows, batch_targets

    dataset = tf.data.Dataset.range(count)
    if seed is not None:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(load).prefetch(tf.data.AUTOTUNE)


def to_uint8(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
