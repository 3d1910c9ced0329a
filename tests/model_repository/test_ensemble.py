"""The `dogs_cats_jpeg` ensemble on the real local tritonserver."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from client.triton import Triton, classify, classify_encoded, model_info
from core.constants import ENCODED_INPUT_NAME, INPUT_NAME, preprocess_name
from core.images import decode_rgb
from harness.data import photo_like

pytestmark = pytest.mark.integration


def _encoded_images(session_images: Path) -> list[bytes]:
    jpegs = [path.read_bytes() for path in sorted(session_images.rglob("*.jpg"))[:3]]
    png = io.BytesIO()
    Image.fromarray(np.full((50, 70, 3), 200, dtype=np.uint8)).save(png, format="PNG")
    return [*jpegs, png.getvalue()]


def test_encoded_bytes_get_the_same_answer_as_client_decoded_tensors(
    served_model: dict, session_images: Path
) -> None:
    client = Triton(served_model["url"])
    blobs = _encoded_images(session_images)
    server_side = classify_encoded(client, "dogs_cats", blobs, top_k=2)
    info = model_info(client)
    client_side = classify(client, info, np.stack([decode_rgb(blob, info.image_size) for blob in blobs]), 2)
    for served, local in zip(server_side, client_side, strict=True):
        assert [p.label for p in served] == [p.label for p in local]
        assert [p.confidence for p in served] == pytest.approx([p.confidence for p in local], abs=1e-6)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"", "empty file"),
        (b"not an image at all", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "image"),  # a JPEG header and nothing else
    ],
)
def test_bad_bytes_fail_their_request_only(
    served_model: dict, session_images: Path, bad: bytes, reason: str
) -> None:
    client = Triton(served_model["url"])
    good = _encoded_images(session_images)[:1]
    with pytest.raises(InferenceServerException, match=reason) as failure:
        classify_encoded(client, "dogs_cats", [*good, bad])
    assert failure.value.status() == "400"
    assert "image 1" in str(failure.value)
    # The model survived and still answers.
    assert len(classify_encoded(client, "dogs_cats", good)) == 1
    assert client.has_model("dogs_cats_preprocess")


def _awkward_photos(folder: Path) -> list[Path]:
    """Full-size photo-like JPEGs as cameras and scanners write them: several sizes and aspect
    ratios, one turned by its EXIF orientation, greyscale and CMYK."""
    folder.mkdir(parents=True)
    photos = {
        "landscape.jpg": photo_like(1, 640, 480),
        "portrait.jpg": photo_like(2, 480, 640),
        "panorama.jpg": photo_like(3, 1000, 300),
        "grey.jpg": photo_like(4, 500, 500).convert("L"),
        "cmyk.jpg": photo_like(5, 400, 300).convert("CMYK"),
    }
    for name, photo in photos.items():
        photo.save(folder / name, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; viewers rotate it upright
    photo_like(6, 640, 480).save(folder / "rotated.jpg", quality=90, exif=exif)
    return [folder / name for name in (*photos, "rotated.jpg")]


def test_training_the_client_and_the_server_decode_the_same_pixels(
    served_model: dict, tmp_path: Path
) -> None:
    """One preprocessing: the tensors training's input pipeline feeds the model equal what the
    client sends and what the server's preprocessing model computes from the file's bytes."""
    from training.job import TrainingJob
    from training.train import make_dataset

    photos = _awkward_photos(tmp_path / "cat")
    client = Triton(served_model["url"])
    size = model_info(client).image_size
    client_side = np.stack([decode_rgb(photo.read_bytes(), size) for photo in photos])

    encoded = client.module.InferInput(ENCODED_INPUT_NAME, [len(photos), 1], "BYTES")
    encoded.set_data_from_numpy(np.array([[photo.read_bytes()] for photo in photos], dtype=np.object_))
    answer = client.infer(
        preprocess_name("dogs_cats"), [encoded], client.module.InferRequestedOutput(INPUT_NAME)
    )
    server_side = answer.as_numpy(INPUT_NAME)

    job = TrainingJob(dataset_uri="unused", output_uri="unused", image_size=size, batch_size=4)
    files = [{"path": f"cat/{photo.name}", "label": "cat"} for photo in photos]
    batches = make_dataset(tmp_path, files, ["cat", "dog"], job)
    training_side = np.concatenate([images.numpy() for images, _ in batches])

    np.testing.assert_array_equal(server_side, client_side)
    np.testing.assert_array_equal(training_side, client_side)
    # Upright: the turned photo's pixels are its upright twin's.
    upright = photo_like(6, 640, 480).transpose(Image.Transpose.ROTATE_270)
    twin = io.BytesIO()
    upright.save(twin, "JPEG", quality=90)
    assert np.abs(client_side[-1].astype(int) - decode_rgb(twin.getvalue(), size).astype(int)).mean() < 2
