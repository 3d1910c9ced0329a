"""Batch inference: every image under an input URI, through Triton, to the bucket.

Writes `predictions.jsonl` (one line per image: image, label, confidence) and
`report.json` (counts, failures with reasons, confidence stats, label
distribution) under the output URI. Requests run in a few worker threads,
each with its own HTTP client (tritonclient's HTTP client is not thread-safe).
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import tritonclient.http as httpclient

from client.triton import DEFAULT_MODEL, ModelInfo, classify, model_info
from pipeline import storage
from pipeline.images import IMAGE_SUFFIXES, decode_rgb
from pipeline.settings import join_uri

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    predictions: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)


def list_images(input_uri: str) -> list[str]:
    return [u for u in storage.list_files(input_uri) if PurePosixPath(u).suffix.lower() in IMAGE_SUFFIXES]


def run_batch(
    url: str,
    input_uri: str,
    output_uri: str,
    *,
    model_name: str = DEFAULT_MODEL,
    concurrency: int = 4,
    timeout_s: float = 60.0,
    class_names: Collection[str] = (),
) -> dict:
    """Classify every image under `input_uri`; returns the report also written to the bucket.

    With `class_names`, images in folders of those names (a staged split) are
    scored, and the report carries their accuracy.
    """
    images = list_images(input_uri)
    if not images:
        raise ValueError(f"no images found under {input_uri}")
    local = threading.local()

    def client() -> httpclient.InferenceServerClient:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        return local.client

    info = model_info(client(), model_name)
    batch_size = info.max_batch_size
    started = time.monotonic()
    outcome = BatchOutcome()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for part in pool.map(
            lambda chunk: _classify_chunk(client(), info, chunk), _chunks(images, batch_size)
        ):
            outcome.predictions += part.predictions
            outcome.failures += part.failures
    elapsed = time.monotonic() - started

    report = build_report(
        outcome, input_uri=input_uri, model_name=model_name, seconds=elapsed, class_names=class_names
    )
    storage.write_text(
        join_uri(output_uri, "predictions.jsonl"),
        "".join(json.dumps(p) + "\n" for p in outcome.predictions),
    )
    storage.write_text(join_uri(output_uri, "report.json"), json.dumps(report, indent=2))
    log.info(
        "%d predicted, %d failed in %.1f s (%.0f img/s); report at %s",
        report["succeeded"],
        report["failed"],
        elapsed,
        report["images_per_second"],
        output_uri,
    )
    return report


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _classify_chunk(
    client: httpclient.InferenceServerClient, info: ModelInfo, uris: list[str]
) -> BatchOutcome:
    outcome = BatchOutcome()
    decoded: list[tuple[str, np.ndarray]] = []
    for uri in uris:
        try:
            decoded.append((uri, decode_rgb(storage.read_bytes(uri), info.image_size)))
        except (ValueError, OSError) as exc:
            outcome.failures.append({"image": uri, "reason": str(exc)})
    if decoded:
        batch = np.stack([array for _, array in decoded])
        for (uri, _), (top,) in zip(decoded, classify(client, info, batch), strict=True):
            outcome.predictions.append(
                {"image": uri, "label": top.label, "confidence": round(top.confidence, 6)}
            )
    return outcome


def build_report(
    outcome: BatchOutcome,
    *,
    input_uri: str,
    model_name: str,
    seconds: float,
    class_names: Collection[str] = (),
) -> dict:
    confidences = [p["confidence"] for p in outcome.predictions]
    labels = Counter(p["label"] for p in outcome.predictions)
    total = len(outcome.predictions) + len(outcome.failures)
    report = {
        "input": input_uri,
        "model": model_name,
        "images": total,
        "succeeded": len(outcome.predictions),
        "failed": len(outcome.failures),
        "failures": outcome.failures,
        "label_distribution": dict(sorted(labels.items())),
        "confidence": _stats(confidences),
        "seconds": round(seconds, 3),
        "images_per_second": round(total / seconds, 1) if seconds > 0 else 0.0,
    }
    known = [p for p in outcome.predictions if PurePosixPath(p["image"]).parent.name in class_names]
    if known:
        correct = sum(PurePosixPath(p["image"]).parent.name == p["label"] for p in known)
        report["accuracy_by_folder"] = round(correct / len(known), 4)
    return report


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "mean": round(statistics.fmean(values), 4),
        "min": round(min(values), 4),
        "p50": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }
