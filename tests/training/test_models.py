from __future__ import annotations

import keras
import numpy as np
import pytest

from training.models import build_model


@pytest.mark.parametrize(("classes", "units"), [(2, 1), (5, 5)])
def test_small_model_takes_uint8_and_returns_logits(classes: int, units: int) -> None:
    model = build_model("small", image_size=32, num_classes=classes)
    assert model.input.dtype == "uint8"
    assert model.input.name == "image"
    out = model(np.zeros((3, 32, 32, 3), np.uint8), training=False)
    assert tuple(out.shape) == (3, units)


def test_tutorial_model_has_the_tutorial_shape() -> None:
    model = build_model("xception", image_size=180, num_classes=2)
    # The current keras.io tutorial model: 2.73 M parameters, BN statistics included.
    assert model.count_params() == 2_731_065
    layers = model.get_layer("xception_trainable").layers
    widths = [layer.filters for layer in layers if type(layer).__name__ == "SeparableConv2D"]
    assert widths == [256, 256, 512, 512, 728, 728, 1024]


def test_one_class_is_refused() -> None:
    with pytest.raises(ValueError, match="at least two classes"):
        build_model("small", 32, 1)


def test_the_pretrained_model_resizes_to_its_backbone_size_inside() -> None:
    """Any internal resolution, same uint8 input at the run's image size."""
    model = build_model("efficientnet_lite0", 40, 2, backbone_size=64)
    bottom = model.get_layer("efficientnet_lite0_bottom")
    (resize,) = [layer for layer in bottom.layers if isinstance(layer, keras.layers.Resizing)]
    assert (resize.height, resize.width) == (64, 64)
    assert model.input_shape == (None, 40, 40, 3)
    assert model(np.zeros((1, 40, 40, 3), np.uint8)).shape == (1, 1)


def test_backbone_size_is_refused_for_a_model_trained_from_scratch() -> None:
    from training.job import TrainingJob

    with pytest.raises(ValueError, match="backbone_size needs a pretrained efficientnet_lite model"):
        TrainingJob(dataset_uri="/d", output_uri="/m", model="small", backbone_size=256)


@pytest.mark.parametrize(
    ("choices", "refusal"),
    [
        ({"backbone_size": 16}, "backbone_size is 0 .the backbone's own. or 32 up, not 16"),
        ({"fine_tune_blocks": 17}, "fine_tune_blocks is 17, but efficientnet_lite0 has 16 blocks"),
        ({"model": "efficientnet_lite2", "fine_tune_blocks": 22}, "less than or equal to 21"),
    ],
)
def test_a_pretrained_backbone_s_sizes_are_checked_before_any_work(
    choices: dict[str, object], refusal: str
) -> None:
    from training.job import TrainingJob

    with pytest.raises(ValueError, match=refusal):
        TrainingJob(dataset_uri="/d", output_uri="/m", **choices)  # type: ignore[arg-type]
    TrainingJob(dataset_uri="/d", output_uri="/m", model="efficientnet_lite2", fine_tune_blocks=21)
