"""The converted EfficientNet-Lite0 is ImageNet's: its own head names real cats and dogs."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from training.efficientnet import backbone, set_weights
from training.models import build_model
from training.pretrained import efficientnet_lite0_weights

IMAGENET_CLASSES = 1000


def imagenet_classifier(image_size: int, weights: dict[str, np.ndarray]) -> keras.Model:
    """The whole converted network with its 1000-class ImageNet head: the proof the weights are right."""
    model, sources = backbone(image_size)
    head = keras.layers.Dense(IMAGENET_CLASSES)
    logits = head(model.output)
    set_weights([*sources, (head, "_fc")], weights)
    return keras.Model(model.input, logits, name="efficientnet_lite0_imagenet")


PETS = Path(__file__).resolve().parents[1] / "data" / "pets"
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)  # the dog breeds


@pytest.fixture(scope="module")
def imagenet() -> object:
    return imagenet_classifier(180, efficientnet_lite0_weights())


@pytest.mark.parametrize("photo", sorted(p.name for p in PETS.glob("*.jpg")))
def test_the_imagenet_head_names_each_photo_s_animal(imagenet: object, photo: str) -> None:
    image = np.asarray(Image.open(PETS / photo).convert("RGB").resize((180, 180)))[None]
    top = int(np.argmax(imagenet(image, training=False)))  # type: ignore[operator]
    expected = IMAGENET_CATS if photo.startswith("cat") else IMAGENET_DOGS
    assert top in expected, f"{photo}: ImageNet class {top}"


def test_only_the_new_head_trains_and_the_backbone_stays_in_inference_mode() -> None:
    model = build_model("efficientnet_lite0", image_size=64, num_classes=3)
    assert [tuple(w.shape) for w in model.trainable_weights] == [(1280, 3), (3,)]
    backbone = model.get_layer("efficientnet_lite0")
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    # Called in training mode, frozen BatchNorm still uses ImageNet's statistics: same features.
    features = np.asarray(backbone(images, training=True))
    np.testing.assert_allclose(features, np.asarray(backbone(images, training=False)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocks", [1, 4, 8, 16])
def test_fine_tuning_unfreezes_the_top_blocks_and_the_head_convolution_only(blocks: int) -> None:
    from keras import layers

    from training.efficientnet import backbone, unfreeze_top

    model, _ = backbone(40)
    unfreeze_top(model, blocks)
    weighted = [layer for layer in model.layers if layer.weights]
    trainable = {layer.name.split("_")[1] if layer.name.startswith("blocks_") else layer.name
                 for layer in weighted if layer.trainable}  # fmt: skip
    assert trainable == {*(str(block) for block in range(16 - blocks, 16)), "conv_head"}
    assert not [
        layer.name for layer in weighted if isinstance(layer, layers.BatchNormalization) and layer.trainable
    ]
