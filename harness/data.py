"""Generated inputs: labelled images, every odd or hostile image kind, a fake model folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from core import storage

REPO_ROOT = Path(__file__).resolve().parents[1]

CLASS_CHANNELS = {"cat": 0, "dog": 2}  # cats are red, dogs are blue: learnable in seconds


def write_images(root: Path, per_class: int, size: int = 48, seed: int = 0) -> Path:
    """`root/<class>/<class><i>.jpg`: noisy images tinted by class."""
    rng = np.random.default_rng(seed)
    for label, channel in CLASS_CHANNELS.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(folder / f"{label}{index}.jpg", quality=90)
    return root


def photo_like(seed: int, width: int, height: int) -> Image.Image:
    """Noise with a photo's spectrum (amplitude falling as 1/f^1.5): smooth shapes and fine
    detail, where flat noise has only detail (perceptual hashes and resizing both tell)."""
    rng = np.random.default_rng(seed)
    frequency = np.hypot(np.fft.rfftfreq(width)[None, :], np.fft.fftfreq(height)[:, None])
    frequency[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = (rng.normal(size=frequency.shape) + 1j * rng.normal(size=frequency.shape)) / frequency**1.5
        spectrum[0, 0] = 0
        channel = np.fft.irfft2(spectrum, s=(height, width))
        channels.append((channel - channel.mean()) / channel.std() * 40 + 128)
    return Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))


# File name -> the reason it must be refused with, or None when it must be classified.
IMAGE_KINDS: dict[str, str | None] = {
    "cmyk.jpg": None,
    "grey.jpg": None,
    "rgba.png": None,
    "sixteen_bit.png": None,
    "palette.gif": None,
    "empty.jpg": "empty file",
    "text.jpg": "not an image",
    "truncated.jpg": "image",  # Pillow's words vary: "image file is truncated", "broken data stream"
    "bomb.png": "decompression bomb",
}


def write_image_kinds(folder: Path) -> Path:
    """One file of each kind in IMAGE_KINDS: odd but valid modes, and broken or hostile files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("L").save(folder / "grey.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (60, 80), dtype=np.uint16)).save(folder / "sixteen_bit.png")
    rgb.convert("P").save(folder / "palette.gif")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    whole = folder / "whole.jpg"
    rgb.resize((400, 300)).save(whole, quality=95)
    (folder / "truncated.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 MP in a few KB
    return folder


def fake_model(folder: Path, image_size: int = 32) -> str:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx-bytes")
    (folder / "labels.txt").write_text("cat\ndog\n")
    (folder / "metrics.json").write_text(json.dumps({"image_size": image_size, "labels": ["cat", "dog"]}))
    return str(folder)


def manifest_files(dataset: Path) -> list[dict]:
    """A staged dataset's manifest entries, in path order."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    return sorted(manifest["files"], key=lambda entry: entry["path"])


def relative_files(root: Path) -> list[str]:
    """Every file under `root` as the storage layer lists it, relative to `root`."""
    return [uri.removeprefix(str(root)) for uri in storage.list_files(str(root))]
