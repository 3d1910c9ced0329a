"""EfficientNet-Lite0, -Lite1 and -Lite2 in Keras 3, every weight set from the ImageNet file of
`training.pretrained`.

Lite0 is EfficientNet-B0 made for CPUs and accelerators: ReLU6 instead of
swish, no squeeze-and-excitation, a fixed stem and head. Lite1 and Lite2 are the
same network deeper (and Lite2 wider), trained at a larger resolution; their first
and last stages and the stem and head keep Lite0's sizes, as in Google's
`efficientnet_lite_builder`. What made the
converted ImageNet head agree with the original: TF "same" padding, BatchNorm
epsilon 1e-3, and input scaled as (x - 127) / 128 on RGB 0-255. The input size
and this scaling live inside the model, so clients keep sending uint8 RGB at the
run's image_size and nothing outside the model changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from core.settings import PretrainedChoice
from training.pretrained import imagenet_weights

FEATURES = 1280
BN_EPSILON = 1e-3
BATCH_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")  # Keras' gamma, beta, mean, variance


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


@dataclass(frozen=True)
class Variant:
    stages: tuple[Stage, ...]
    resolution: int  # what its ImageNet weights were trained at: the backbone's default input

    @property
    def blocks(self) -> int:
        return sum(stage.repeats for stage in self.stages)


def _stages(repeats: tuple[int, ...], filters: tuple[int, ...]) -> tuple[Stage, ...]:
    kernels, strides, expands = (3, 3, 5, 3, 5, 5, 3), (1, 2, 2, 2, 1, 2, 1), (1, 6, 6, 6, 6, 6, 6)
    return tuple(Stage(*stage) for stage in zip(repeats, kernels, strides, expands, filters, strict=True))


# Read off the weight files' block shapes; set_weights refuses any other, and a test loads each.
VARIANTS: dict[PretrainedChoice, Variant] = {
    "efficientnet_lite0": Variant(_stages((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)), 224),
    "efficientnet_lite1": Variant(_stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)), 240),
    "efficientnet_lite2": Variant(_stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)), 260),
}
STEM_FILTERS = 32


class _Builder:
    """Builds the layers in order and records which weights of the file each one takes.

    Each layer is named after its source (`_blocks.12._expand_conv` -> `blocks_12_expand_conv`),
    so the blocks can be told apart by name.
    """

    def __init__(self) -> None:
        self.sources: list[tuple[layers.Layer, str]] = []

    def _record(self, layer: layers.Layer, source: str) -> layers.Layer:
        self.sources.append((layer, source))
        return layer

    def conv(
        self, x: keras.KerasTensor, filters: int, kernel: int, stride: int, source: str
    ) -> keras.KerasTensor:
        layer = layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=layer_name(source)
        )
        return self._record(layer, source)(x)

    def depthwise(self, x: keras.KerasTensor, kernel: int, stride: int, source: str) -> keras.KerasTensor:
        layer = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=layer_name(source)
        )
        return self._record(layer, source)(x)

    def batch_norm(self, x: keras.KerasTensor, source: str, relu6: bool = True) -> keras.KerasTensor:
        x = self._record(layers.BatchNormalization(epsilon=BN_EPSILON, name=layer_name(source)), source)(x)
        return layers.ReLU(6.0)(x) if relu6 else x


def backbone(
    name: PretrainedChoice, image_size: int, backbone_size: int = 0, top_blocks: int = 0
) -> tuple[keras.Model, keras.Model, list[tuple[layers.Layer, str]]]:
    """The network in two parts, and each layer's weight source.

    `bottom`: uint8 RGB [N, size, size, 3] -> the activations entering the top `top_blocks`
    blocks; `top`: those activations -> pooled ImageNet features [N, 1280]. Fine-tuning trains
    only the top, so training computes the bottom's activations once (`training.features`).
    The images are resized to `backbone_size` inside (0: the variant's ImageNet resolution)."""
    variant = VARIANTS[name]
    backbone_size = backbone_size or variant.resolution
    first_top_block = variant.blocks - top_blocks
    build = _Builder()
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="uint8")
    x = layers.Rescaling(1.0 / 128, offset=-127.0 / 128)(inputs)
    if image_size != backbone_size:
        x = layers.Resizing(backbone_size, backbone_size, interpolation="bilinear")(x)
    x = build.batch_norm(build.conv(x, STEM_FILTERS, 3, 2, "_conv_stem"), "_bn0")
    block, filters_in = 0, STEM_FILTERS
    bottom: keras.Model | None = None
    top_inputs: keras.KerasTensor | None = None
    for stage in variant.stages:
        for repeat in range(stage.repeats):
            if block == first_top_block:
                bottom, x = _cut(inputs, x, name)
                top_inputs = x
            stride = stage.stride if repeat == 0 else 1
            prefix = f"_blocks.{block}."
            shortcut = x
            if stage.expand != 1:
                x = build.conv(x, filters_in * stage.expand, 1, 1, prefix + "_expand_conv")
                x = build.batch_norm(x, prefix + "_bn0")
            x = build.batch_norm(
                build.depthwise(x, stage.kernel, stride, prefix + "_depthwise_conv"), prefix + "_bn1"
            )
            x = build.conv(x, stage.filters, 1, 1, prefix + "_project_conv")
            x = build.batch_norm(x, prefix + "_bn2", relu6=False)
            if stride == 1 and filters_in == stage.filters:
                x = layers.Add()([shortcut, x])
            block, filters_in = block + 1, stage.filters
    if bottom is None or top_inputs is None:  # no block in the top: it starts at the head convolution
        bottom, x = _cut(inputs, x, name)
        top_inputs = x
    x = build.batch_norm(build.conv(x, FEATURES, 1, 1, "_conv_head"), "_bn1")
    features = layers.GlobalAveragePooling2D()(x)
    return bottom, keras.Model(top_inputs, features, name=f"{name}_top"), build.sources


def _cut(inputs: keras.KerasTensor, x: keras.KerasTensor, name: str) -> tuple[keras.Model, keras.KerasTensor]:
    """The model up to `x`, and a new input of x's shape for the layers after it."""
    return keras.Model(inputs, x, name=f"{name}_bottom"), keras.Input(shape=x.shape[1:])


def layer_name(source: str) -> str:
    """`_blocks.12._expand_conv` -> `blocks_12_expand_conv` (Keras names take no dots)."""
    return source.replace("._", "_").replace(".", "_").strip("_")


def unfreeze_top(top: keras.Model) -> None:
    """Let the top part's blocks and the head convolution train; BatchNorm layers stay frozen
    (and the classifier calls the top in inference mode), so ImageNet's statistics are kept."""
    top.trainable = True
    for layer in top.layers:
        layer.trainable = not isinstance(layer, layers.BatchNormalization)


def set_weights(sources: list[tuple[layers.Layer, str]], weights: dict[str, np.ndarray]) -> None:
    """PyTorch layouts to Keras: conv [out, in, kh, kw] -> [kh, kw, in, out]; depthwise
    [ch, 1, kh, kw] -> [kh, kw, ch, 1]; BatchNorm gamma, beta, mean, variance;
    dense [out, in] -> [in, out]."""
    for layer, source in sources:
        if isinstance(layer, layers.DepthwiseConv2D):
            values = [weights[f"{source}.weight"].transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            values = [weights[f"{source}.weight"].transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.BatchNormalization):
            values = [weights[f"{source}.{name}"] for name in BATCH_NORM_TENSORS]
        else:
            values = [weights[f"{source}.weight"].T, weights[f"{source}.bias"]]
        layer.set_weights(values)


def pretrained_backbone(
    name: PretrainedChoice, image_size: int, backbone_size: int = 0, top_blocks: int = 0
) -> tuple[keras.Model, keras.Model]:
    """The variant's bottom and top (`backbone`) with its ImageNet weights (read and checked by
    `training.pretrained`)."""
    bottom, top, sources = backbone(name, image_size, backbone_size, top_blocks)
    set_weights(sources, imagenet_weights(name))
    return bottom, top
