"""Image decoding shared by staging (validation) and the client (preprocessing)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ProjectError

# What the batch client classifies: every format Pillow decodes that photos come in.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Far above any photo worth classifying, far below what exhausts memory when decoded.
MAX_IMAGE_PIXELS = 50_000_000


class ImageDecodeError(ProjectError, ValueError):
    """The bytes are not an image Pillow can fully decode; the message says why."""


def decode_rgb(data: bytes, image_size: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded bytes -> uint8 RGB array, upright (EXIF orientation applied, as viewers show a
    phone's photo), resized to image_size x image_size if given.

    The one decode of the project: training's input pipeline, the client and the server's
    preprocessing model all call it, so the model sees in training the pixels it is served.
    Decodes every pixel, so truncated files fail here rather than later, and refuses images
    over `max_pixels` before decoding them (decompression bombs).
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"decompression bomb: {width} x {height} pixels is over the limit of {max_pixels}"
                )
            if image_size:
                image.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale
            upright = ImageOps.exif_transpose(image)
            rgb = _sixteen_bit_to_8(upright).convert("RGB")  # CMYK, grey, palette, RGBA: alpha dropped
            if image_size:
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image Pillow can read") from exc
    except Exception as exc:  # Pillow raises many types for bad input
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


def _sixteen_bit_to_8(image: Image.Image) -> Image.Image:
    """16-bit greyscale (modes I;16*, I) keeps its top byte, as TensorFlow's decoder
    does; Pillow's own convert would clip everything above 255 to white."""
    if not image.mode.startswith("I"):
        return image
    return Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")
