"""The `dogs_cats_jpeg` ensemble on the real local tritonserver."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from client.triton import Triton, classify, classify_encoded, model_info
from core.images import decode_rgb

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
