"""The peers' design, for comparison only: one image per HTTP request, FastAPI +
ONNX Runtime under uvicorn (what many "serve a CNN" tutorials build).

    PEER_MODEL=model.onnx PEER_THREADS=1 uvicorn benchmarks.peer_service:app --workers 2

Decodes exactly as our client does (pipeline/images.py), so the work per image
is the same as on the Triton path.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, UploadFile

from core.images import ImageDecodeError, decode_rgb

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("PEER_THREADS", "0"))
session = ort.InferenceSession(os.environ["PEER_MODEL"], options, providers=["CPUExecutionProvider"])
image_size = int(session.get_inputs()[0].shape[1])
labels = os.environ.get("PEER_LABELS", "Cat,Dog").split(",")
app = FastAPI()


@app.post("/predict")
def predict(file: UploadFile) -> dict[str, object]:
    """A plain `def`: FastAPI runs it in its thread pool, so decoding and inference of
    concurrent requests overlap (ONNX Runtime releases the GIL) - the peer at its best."""
    try:
        image = decode_rgb(file.file.read(), image_size)
    except ImageDecodeError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    (probabilities,) = session.run(["probabilities"], {"image": image[None]})
    best = int(np.argmax(probabilities[0]))
    return {"label": labels[best], "confidence": float(probabilities[0][best])}
