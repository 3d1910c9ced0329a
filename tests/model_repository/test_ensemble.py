"""The `dogs_cats_jpeg` ensemble on the real local tritonserver."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from client.triton import classify, model_info
from model_repository import ENCODED_INPUT_NAME, OUTPUT_NAME
from pipeline.images import decode_rgb

pytestmark = pytest.mark.integration


def _classify_encoded(client: httpclient.InferenceServerClient, blobs: list[bytes]) -> np.ndarray:
    encoded = np.array([[blob] for blob in blobs], dtype=np.object_)
    model_input = httpclient.InferInput(ENCODED_INPUT_NAME, list(encoded.shape), "BYTES")
    model_input.set_data_from_numpy(encoded, binary_data=True)
    output = httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=True, class_count=2)
    return client.infer("dogs_cats_jpeg", [model_input], outputs=[output]).as_numpy(OUTPUT_NAME)


def _encoded_images(session_images: Path) -> list[bytes]:
    jpegs = [path.read_bytes() for path in sorted(session_images.rglob("*.jpg"))[:3]]
    png = io.BytesIO()
    Image.fromarray(np.full((50, 70, 3), 200, dtype=np.uint8)).save(png, format="PNG")
    return [*jpegs, png.getvalue()]


def test_encoded_bytes_get_the_same_answer_as_client_decoded_tensors(
    served_model: dict, session_images: Path
) -> None:
    client = httpclient.InferenceServerClient(served_model["url"])
    blobs = _encoded_images(session_images)
    server_side = _classify_encoded(client, blobs)
    info = model_info(client)
    client_side = classify(client, info, np.stack([decode_rgb(blob, info.image_size) for blob in blobs]), 2)
    for row, predictions in zip(server_side, client_side, strict=True):
        labels = [entry.decode().split(":")[2] for entry in row]
        scores = [float(entry.decode().split(":")[0]) for entry in row]
        assert labels == [p.label for p in predictions]
        assert scores == pytest.approx([p.confidence for p in predictions], abs=1e-6)


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
    client = httpclient.InferenceServerClient(served_model["url"])
    good = _encoded_images(session_images)[:1]
    with pytest.raises(InferenceServerException, match=reason) as failure:
        _classify_encoded(client, [*good, bad])
    assert failure.value.status() == "400"
    assert "image 1" in str(failure.value)
    # The model survived and still answers.
    assert len(_classify_encoded(client, good)) == 1
    assert client.is_model_ready("dogs_cats_preprocess")
