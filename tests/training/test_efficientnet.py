"""The converted EfficientNet-Lite backbones are ImageNet's: their own heads name real cats and dogs."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import keras
import numpy as np
import pytest
from PIL import Image

from core.settings import BACKBONE_BLOCKS, PretrainedChoice
from training.efficientnet import VARIANTS, backbone, set_weights
from training.models import build_classifier
from training.pretrained import imagenet_weights

IMAGENET_CLASSES = 1000
PETS = Path(__file__).resolve().parents[1] / "data" / "pets"
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)  # the dog breeds
VARIANT_NAMES: tuple[PretrainedChoice, ...] = get_args(PretrainedChoice)


def imagenet_classifier(variant: PretrainedChoice, image_size: int) -> keras.Model:
    """The whole converted network with its 1000-class ImageNet head: the proof the weights are right."""
    bottom, top, sources = backbone(variant, image_size, top_blocks=4)
    head = keras.layers.Dense(IMAGENET_CLASSES)
    logits = head(top(bottom.output))
    set_weights([*sources, (head, "_fc")], imagenet_weights(variant))
    return keras.Model(bottom.input, logits, name=f"{variant}_imagenet")


@pytest.fixture(scope="module", params=VARIANT_NAMES)
def imagenet(request: pytest.FixtureRequest) -> keras.Model:
    return imagenet_classifier(request.param, 180)


@pytest.mark.parametrize("photo", sorted(p.name for p in PETS.glob("*.jpg")))
def test_the_imagenet_head_names_each_photo_s_animal(imagenet: keras.Model, photo: str) -> None:
    image = np.asarray(Image.open(PETS / photo).convert("RGB").resize((180, 180)))[None]
    top = int(np.argmax(imagenet(image, training=False)))
    expected = IMAGENET_CATS if photo.startswith("cat") else IMAGENET_DOGS
    assert top in expected, f"{imagenet.name}, {photo}: ImageNet class {top}"


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_each_backbone_runs_at_its_imagenet_resolution_unless_told(variant: PretrainedChoice) -> None:
    own, _, _ = backbone(variant, 40)
    told, _, _ = backbone(variant, 40, backbone_size=64)
    resized = [layer.output.shape[1] for layer in (own.layers[2], told.layers[2])]
    assert resized == [VARIANTS[variant].resolution, 64]
    assert VARIANTS[variant].blocks == BACKBONE_BLOCKS[variant]


@pytest.mark.parametrize("top_blocks", [0, 8])
def test_only_the_new_head_trains_and_the_backbone_stays_in_inference_mode(top_blocks: int) -> None:
    classifier = build_classifier("efficientnet_lite0", image_size=64, num_classes=3, top_blocks=top_blocks)
    head = [(1280, 3), (3,)]
    for model in (classifier.trainable, classifier.whole()):
        assert [tuple(w.shape) for w in model.trainable_weights] == head
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    # Called in training mode, frozen BatchNorm still uses ImageNet's statistics: same outputs.
    top = classifier.trainable.get_layer("efficientnet_lite0_top")
    for part, inputs in ((classifier.frozen, images), (top, classifier.frozen(images, training=False))):
        outputs = np.asarray(part(inputs, training=False))
        np.testing.assert_allclose(np.asarray(part(inputs, training=True)), outputs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("variant", "blocks"),
    [("efficientnet_lite0", 1), ("efficientnet_lite0", 16),
     ("efficientnet_lite2", 8), ("efficientnet_lite2", 21)],
)  # fmt: skip
def test_fine_tuning_unfreezes_the_top_blocks_and_the_head_convolution_only(
    variant: PretrainedChoice, blocks: int
) -> None:
    from keras import layers

    from training.efficientnet import unfreeze_top

    bottom, top, _ = backbone(variant, 40, top_blocks=blocks)
    unfreeze_top(top)
    total = BACKBONE_BLOCKS[variant]
    weighted = [layer for layer in top.layers if layer.weights]
    trainable = {layer.name.split("_")[1] if layer.name.startswith("blocks_") else layer.name
                 for layer in weighted if layer.trainable}  # fmt: skip
    assert trainable == {*(str(block) for block in range(total - blocks, total)), "conv_head"}
    assert not [
        layer.name for layer in weighted if isinstance(layer, layers.BatchNormalization) and layer.trainable
    ]
    assert "conv_stem" in {layer.name for layer in bottom.layers}
