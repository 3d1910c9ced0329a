"""The bucket checkpoint's best-epoch weights, restored into a freshly built model.

They are kept by position, as `get_weights` lists them: keyed by variable path they
would not load into a model built afresh in the same process, whose unnamed layers
Keras numbers on (`batch_normalization_20` where the saved one was `batch_normalization`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.checkpoints import BucketCheckpoint
from training.models import build_model


def test_the_best_epoch_is_restored_into_a_fresh_model(tmp_path: Path) -> None:
    model = build_model("small", 32, 2)
    checkpoint = BucketCheckpoint(str(tmp_path), early_stopping_patience=3)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_loss": 0.5})
    best = model.get_weights()
    model.set_weights([np.ones_like(values) for values in best])
    checkpoint.on_epoch_end(1, {"val_loss": 0.9})  # worse: the first epoch stays the best

    fresh = build_model("small", 32, 2)
    checkpoint.restore_best(fresh)

    restored = fresh.get_weights()
    assert len(restored) == len(best)
    for got, wanted in zip(restored, best, strict=True):
        np.testing.assert_array_equal(got, wanted)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    checkpoint = BucketCheckpoint(str(tmp_path), early_stopping_patience=3)
    checkpoint.set_model(build_model("small", 32, 2))
    checkpoint.on_epoch_end(0, {"val_loss": 0.5})
    with pytest.raises(ValueError, match="weight list of length"):
        checkpoint.restore_best(build_model("xception", 32, 2))
