"""Batch inference: every image under an input URI, through Triton, to the bucket.

Resumable and exactly-once: the image list is fixed on the first run
(`inputs.json`), cut into parts, and each finished part is written whole
(`parts/part-NNNNN.json`); a rerun skips the parts already there. When all are
done they are merged into `predictions.jsonl` (one line per image: image,
label, confidence) and `report.json` (counts, failures with reasons,
confidence stats, label distribution). Requests run in a few worker threads,
each with its own HTTP client (tritonclient's HTTP client is not thread-safe),
and are retried with exponential backoff while the server is unreachable or
answers 5xx; a server that stays down ends the run with every finished part kept.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TypeVar

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.triton import DEFAULT_MODEL, ModelInfo, classify, model_info
from pipeline import storage
from pipeline.images import IMAGE_SUFFIXES, ImageDecodeError, decode_rgb
from pipeline.settings import join_uri

log = logging.getLogger(__name__)

T = TypeVar("T")
INPUTS = "inputs.json"
PART_SIZE = 256  # images; the unit of resumption, big enough to keep the workers busy


class TritonUnavailable(RuntimeError):
    """Triton stayed unreachable (or kept failing) through the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def call(self, action: Callable[[], T], what: str) -> T:
        """Run `action`, retrying connection errors and 5xx answers with exponential backoff."""
        delay, attempt = self.first_delay_s, 0
        while True:
            attempt += 1
            try:
                return action()
            except Exception as exc:
                if not _retryable(exc):
                    raise
                if attempt >= self.attempts:
                    raise TritonUnavailable(f"{what} failed {attempt} times; last error: {exc}") from exc
                log.warning("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        return not status or status.startswith("5") or "unavailable" in str(exc).lower()
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


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
    retry: RetryPolicy | None = None,
    part_size: int = PART_SIZE,
) -> dict:
    """Classify every image under `input_uri`; returns the report also written to the bucket.

    With `class_names`, images in folders of those names (a staged split) are
    scored, and the report carries their accuracy.
    """
    retry = retry or RetryPolicy()
    local = threading.local()

    def client() -> httpclient.InferenceServerClient:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        return local.client

    parts = _parts(input_uri, output_uri, part_size)
    info = retry.call(lambda: model_info(client(), model_name), f"reading {model_name}'s config at {url}")
    started = time.monotonic()
    done = {index for index in range(len(parts)) if storage.exists(_part_uri(output_uri, index))}
    resumed, processed = len(done), 0
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for index, images in enumerate(parts):
            if index in done:
                continue
            outcome = BatchOutcome()
            requests = _chunks(images, info.max_batch_size)
            try:
                for result in pool.map(lambda chunk: _classify_chunk(client, info, chunk, retry), requests):
                    outcome.predictions += result.predictions
                    outcome.failures += result.failures
            except TritonUnavailable as exc:
                raise TritonUnavailable(
                    f"{exc}; {len(done)} of {len(parts)} parts are saved under {output_uri}: rerun to resume"
                ) from exc
            storage.write_text(_part_uri(output_uri, index), json.dumps(outcome.__dict__))
            done.add(index)
            processed += len(images)
    elapsed = time.monotonic() - started

    outcome = BatchOutcome()
    for index in range(len(parts)):
        part = json.loads(storage.read_text(_part_uri(output_uri, index)))
        outcome.predictions += part["predictions"]
        outcome.failures += part["failures"]
    report = build_report(
        outcome,
        input_uri=input_uri,
        model_name=model_name,
        seconds=elapsed,
        processed=processed,
        class_names=class_names,
    )
    report["parts"] = {"total": len(parts), "resumed": resumed}
    storage.write_text(
        join_uri(output_uri, "predictions.jsonl"),
        "".join(json.dumps(p) + "\n" for p in outcome.predictions),
    )
    storage.write_text(join_uri(output_uri, "report.json"), json.dumps(report, indent=2))
    log.info(
        "%d predicted, %d failed in %.1f s (%.0f img/s, %d of %d parts resumed); report at %s",
        report["succeeded"], report["failed"], elapsed, report["images_per_second"], resumed, len(parts),
        output_uri,
    )  # fmt: skip
    return report


def _parts(input_uri: str, output_uri: str, part_size: int) -> list[list[str]]:
    """The run's image list cut into parts, fixed by the first run so reruns line up."""
    inputs_uri = join_uri(output_uri, INPUTS)
    if storage.exists(inputs_uri):
        recorded = json.loads(storage.read_text(inputs_uri))
        if recorded["input"] != input_uri:
            raise ValueError(
                f"{output_uri} holds a run over {recorded['input']}; use another output for {input_uri}"
            )
        parts: list[list[str]] = recorded["parts"]
        return parts
    images = list_images(input_uri)
    if not images:
        raise ValueError(f"no images found under {input_uri}")
    parts = [images[start : start + part_size] for start in range(0, len(images), part_size)]
    storage.write_text(inputs_uri, json.dumps({"input": input_uri, "parts": parts}))
    return parts


def _part_uri(output_uri: str, index: int) -> str:
    return join_uri(output_uri, "parts", f"part-{index:05d}.json")


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _classify_chunk(
    client: Callable[[], httpclient.InferenceServerClient],
    info: ModelInfo,
    uris: list[str],
    retry: RetryPolicy,
) -> BatchOutcome:
    outcome = BatchOutcome()
    decoded: list[tuple[str, np.ndarray]] = []
    for uri in uris:
        try:
            decoded.append((uri, decode_rgb(storage.read_bytes(uri), info.image_size)))
        except (ImageDecodeError, OSError) as exc:
            outcome.failures.append({"image": uri, "reason": str(exc)})
    if decoded:
        batch = np.stack([array for _, array in decoded])
        answers = retry.call(lambda: classify(client(), info, batch), f"inference on {len(batch)} images")
        for (uri, _), (top,) in zip(decoded, answers, strict=True):
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
    processed: int | None = None,
    class_names: Collection[str] = (),
) -> dict:
    """The run's summary; `processed` (default: every image) is what this run itself sent."""
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
        "images_per_second": round((total if processed is None else processed) / seconds, 1)
        if seconds > 0
        else 0.0,
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
