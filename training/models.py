"""The Keras classifiers: a pretrained EfficientNet-Lite0 (the default), -Lite1 or -Lite2 with
a new head, and, trained from scratch, the tutorial's small Xception and a narrow variant of it.

The two from scratch follow "Image classification from scratch" (keras.io):
rescaling inside the model, an entry convolution, residual SeparableConv blocks,
global pooling, dropout and a logit layer. All take uint8 images, so a client
sends 1 byte per channel (a 180x180 RGB image is 97 KB) and no preprocessing
lives outside the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from core.constants import INPUT_NAME, MODEL_NAME
from core.settings import ModelChoice, PretrainedChoice, is_pretrained

# Keras' default 0.99 needs hundreds of steps before the moving statistics used
# at inference match the data: short runs on small datasets then evaluate as
# chance (constant logits). 0.9 settles within a few dozen steps.
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Widths:
    entry: int
    blocks: tuple[int, ...]
    exit: int


WIDTHS: dict[str, Widths] = {
    # The tutorial's model: 2.7 M parameters, ~47 img/s inference on 2 CPU cores.
    "xception": Widths(entry=128, blocks=(256, 512, 728), exit=1024),
    # Same shape, narrow: ~86 k parameters, trains ~10x faster on a CPU.
    "small": Widths(entry=32, blocks=(64, 128), exit=256),
}


@dataclass(frozen=True)
class Classifier:
    """A classifier in two parts. `frozen` never trains: the input's scaling and, for a pretrained
    backbone, its bottom blocks; training computes its output once per image
    (`training.features`). `trainable` maps that output to logits: it is what is fit,
    checkpointed and resumed. `whole()` joins them into the model that is exported."""

    name: str
    frozen: keras.Model
    trainable: keras.Model

    def whole(self) -> keras.Model:
        """uint8 images [N, size, size, 3] -> logits."""
        inputs = keras.Input(shape=self.frozen.input_shape[1:], dtype="uint8", name=INPUT_NAME)
        outputs = self.trainable(self.frozen(inputs, training=False))
        return keras.Model(inputs, outputs, name=self.name)


def build_model(
    model: ModelChoice, image_size: int, num_classes: int, *, backbone_size: int = 0
) -> keras.Model:
    """The whole classifier of `build_classifier`, its backbone frozen."""
    return build_classifier(model, image_size, num_classes, backbone_size=backbone_size).whole()


def build_classifier(
    model: ModelChoice, image_size: int, num_classes: int, *, backbone_size: int = 0, top_blocks: int = 0
) -> Classifier:
    """Logits out: one for two classes, else one per class. `backbone_size`: a pretrained
    backbone's internal resolution (0: its ImageNet one); `top_blocks`: how many of its blocks
    are in the trainable part (the ones fine-tuning trains; frozen until then)."""
    if num_classes < 2:
        raise ValueError(f"need at least two classes, got {num_classes}")
    units = 1 if num_classes == 2 else num_classes
    if is_pretrained(model):
        return _pretrained(model, image_size, units, backbone_size, top_blocks)
    images = keras.Input(shape=(image_size, image_size, 3), dtype="uint8")
    frozen = keras.Model(images, layers.Rescaling(1.0 / 255)(images), name=f"{model}_scaling")
    inputs = keras.Input(shape=(image_size, image_size, 3))
    widths = WIDTHS[model]
    x = layers.Conv2D(widths.entry, 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    previous = x
    for size in widths.blocks:
        for _ in range(2):
            x = layers.Activation("relu")(x)
            x = layers.SeparableConv2D(size, 3, padding="same")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
    x = layers.SeparableConv2D(widths.exit, 3, padding="same")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.25)(x)
    # float32 logits even under mixed precision: a float16 sigmoid/softmax loses precision.
    outputs = layers.Dense(units, name="logits", dtype="float32")(x)
    trainable = keras.Model(inputs, outputs, name=f"{model}_trainable")
    return Classifier(f"{MODEL_NAME}_{model}", frozen, trainable)


def _pretrained(
    name: PretrainedChoice, image_size: int, units: int, backbone_size: int, top_blocks: int
) -> Classifier:
    """The ImageNet backbone, frozen and always in inference mode (its BatchNorm statistics
    stay ImageNet's, as the Keras transfer-learning guide advises), then dropout and logits."""
    from training.efficientnet import pretrained_backbone

    bottom, top = pretrained_backbone(name, image_size, backbone_size, top_blocks)
    bottom.trainable = top.trainable = False
    inputs = keras.Input(shape=bottom.output_shape[1:])
    x = top(inputs, training=False)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(units, name="logits", dtype="float32")(x)  # float32 under mixed precision
    trainable = keras.Model(inputs, outputs, name=f"{name}_trainable")
    return Classifier(f"{MODEL_NAME}_{name}", bottom, trainable)
