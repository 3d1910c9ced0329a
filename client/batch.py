"""Batch inference: every image under an input URI, through Triton, to the bucket.

Streaming: the image list is read one listing page at a time and cut into
parts of `part_size` images as it goes; memory does not grow with the input.

Resumable and exactly-once: each finished part is written whole and only once
(`parts/part-NNNNN.json`: a hard link of a complete temp file locally, a GCS
upload with the precondition "no object yet"), and names its first and last
image; a rerun skips the parts already there after checking they still line
up with the listing. When all are done,
`merge_outputs` streams the parts into `predictions.jsonl` (one line per
image), `report.json` and `report.html`. The same merge joins the outputs of
the DAG's shards.

Requests run in worker threads, each with its own Triton connection (HTTP or
gRPC), decode included, so decoding and requests overlap; connection errors
and 5xx are retried with exponential backoff, and a server that stays down
ends the run with every finished part kept. A file that cannot be read or
decoded is recorded with its reason and the batch goes on.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import math
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, TypeVar

import numpy as np
from tritonclient.utils import InferenceServerException

from client.progress import Progress
from client.report import ReportBuilder, gallery_images, render_html, thumbnail
from client.triton import (
    MODEL_NAME,
    InferenceProtocol,
    ModelInfo,
    Triton,
    classify,
    classify_encoded,
    is_refusal,
    model_info,
    served_labels,
)
from core import storage
from core.constants import SHARD_SLOTS, ensemble_name
from core.errors import ProjectError
from core.images import IMAGE_SUFFIXES, ImageDecodeError, decode_rgb
from core.settings import join_uri

log = logging.getLogger(__name__)

T = TypeVar("T")
INPUTS = "inputs.json"
SHARDS = "shards.json"
PART_SIZE = 256  # images; the unit of resumption, big enough to keep the workers busy
# A shard task pays 1-1.5 s before its first request (interpreter, imports, listing, connecting:
# benchmarks/batch_stage.py); 2,000 images keep that near 5% of its time on a 2-core server.
MIN_IMAGES_PER_SHARD = 2000
RETRYABLE_GRPC = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "RESOURCE_EXHAUSTED", "UNKNOWN")


class TritonUnavailable(ProjectError, RuntimeError):
    """Triton stayed unreachable (or kept failing) through the retry budget."""


class InputChanged(ProjectError, ValueError):
    """The images under the input differ from those an earlier run recorded."""


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
                if not retryable(exc):
                    raise
                if attempt >= self.attempts:
                    raise TritonUnavailable(f"{what} failed {attempt} times; last error: {exc}") from exc
                log.warning("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_delay_s)


def retryable(exc: Exception) -> bool:
    """Connection trouble, server-side errors, and a model still loading (a server that
    just restarted answers 404 "has no available versions" until it is back); never a
    request the server refused."""
    if isinstance(exc, InferenceServerException):
        if "has no available versions" in str(exc) or "is not ready" in str(exc):
            return True
        status = str(exc.status() or "")
        if status.startswith("StatusCode."):
            return status.removeprefix("StatusCode.") in RETRYABLE_GRPC
        return not status or status.startswith("5") or "unavailable" in str(exc).lower()
    # http.client.HTTPException: geventhttpclient's "connection closed" when the server dies mid-request.
    return isinstance(exc, (ConnectionError, TimeoutError, OSError, http.client.HTTPException))


@dataclass(frozen=True)
class BatchOptions:
    model_name: str = MODEL_NAME
    protocol: InferenceProtocol = "http"
    encoded: bool = False  # send file bytes to the <model>_jpeg ensemble instead of tensors
    concurrency: int = 4
    batch_size: int = 0  # images per request; 0 takes the model's preferred batch (its server's choice)
    timeout_s: float = 60.0
    part_size: int = PART_SIZE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress: bool = False


@dataclass
class Outcome:
    predictions: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.predictions += other.predictions
        self.failures += other.failures
        self.latencies_ms += other.latencies_ms


@dataclass
class LeftOut:
    """The files a listing passes over, by reason, so that none is skipped without a word."""

    files: dict[str, int] = field(default_factory=dict)  # reason -> how many
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first such file

    def add(self, reason: str, uri: str) -> None:
        self.files[reason] = self.files.get(reason, 0) + 1
        self.examples.setdefault(reason, uri)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": sum(self.files.values()),
            "by_reason": {
                reason: {"files": count, "example": self.examples[reason]}
                for reason, count in sorted(self.files.items())
            },
        }


def iter_images(input_uri: str, left_out: LeftOut) -> Iterator[str]:
    """Image files under a folder or gs:// prefix, streamed in a stable order; every other file
    is counted in `left_out`."""
    for uri in storage.iter_files(input_uri):
        suffix = PurePosixPath(uri).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            yield uri
        else:
            left_out.add(f"not an image type classified here ({suffix or 'no suffix'})", uri)


def run_batch(
    url: str,
    input_uri: str,
    output_uri: str,
    options: BatchOptions | None = None,
    *,
    images: Iterable[str] | None = None,
    class_names: Collection[str] = (),
    score_served_labels: bool = False,
) -> dict[str, Any]:
    """Classify every image under `input_uri` (or `images`, named by `input_uri`);
    returns the report also written beside the predictions, with the files the listing
    left out when it listed.

    With `class_names` (a staged split's), or the served model's labels when
    `score_served_labels`, images in folders of those names are scored, and the report
    carries their accuracy and confusion.
    """
    options = options or BatchOptions()
    left_out = LeftOut()
    listed = images if images is not None else iter_images(input_uri, left_out)
    this_run = classify_parts(url, input_uri, output_uri, options, listed)
    if score_served_labels:
        class_names = options.retry.call(
            lambda: served_labels(url, options.model_name, options.protocol),
            f"reading {options.model_name}'s labels at {url}",
        )
    sections: dict[str, Any] = {"this_run": this_run}
    if images is None:
        sections["left_out"] = left_out.to_dict()
    return merge_outputs(
        [output_uri],
        output_uri,
        input_uri=input_uri,
        options=options,
        class_names=class_names,
        sections=sections,
    )


class _Connections:
    """One Triton connection per worker thread (tritonclient's HTTP client is not thread-safe)."""

    def __init__(self, url: str, options: BatchOptions) -> None:
        self.url, self.options = url, options
        self._local = threading.local()
        self._all: list[Triton] = []
        self._lock = threading.Lock()

    def get(self) -> Triton:
        if not hasattr(self._local, "triton"):
            self._local.triton = Triton(self.url, self.options.protocol, self.options.timeout_s)
            with self._lock:
                self._all.append(self._local.triton)
        triton: Triton = self._local.triton
        return triton

    def close(self) -> None:
        for triton in self._all:
            triton.close()


def classify_parts(
    url: str, input_uri: str, output_uri: str, options: BatchOptions, images: Iterable[str]
) -> dict[str, Any]:
    """Write every part not yet written of `images` (listed from `input_uri`); returns this
    run's own figures."""
    stream = iter(images)
    first = next(stream, None)
    if first is None:
        raise ValueError(f"no images found under {input_uri}")
    _record_inputs(output_uri, input_uri, options.part_size)
    connections = _Connections(url, options)
    retry = options.retry
    model = options.model_name
    info = retry.call(lambda: model_info(connections.get(), model), f"reading {model}'s config at {url}")
    if options.encoded and not retry.call(
        lambda: connections.get().has_model(ensemble_name(info.name)), "checking the ensemble"
    ):
        raise ValueError(f"{url} does not serve {ensemble_name(info.name)}: run without --encoded")
    batch_size = min(options.batch_size or info.preferred_batch_size, info.max_batch_size)
    progress = Progress(enabled=options.progress)
    started, processed, resumed, count = time.monotonic(), 0, 0, 0

    def work(chunk: list[str]) -> Outcome:
        outcome = _classify_chunk(connections.get(), info, chunk, options)
        progress.advance(len(outcome.predictions), len(outcome.failures))
        return outcome

    # The next part's requests are queued before this one's answers are awaited, so the
    # workers never idle at a part boundary; parts are still written in order.
    in_flight: deque[_PartInFlight] = deque()

    def finish_oldest() -> int:
        part = in_flight.popleft()
        outcome = Outcome()
        try:
            for future in part.futures:
                outcome.add(future.result())
        except TritonUnavailable as exc:
            raise TritonUnavailable(
                f"{exc}; {part.index} parts are saved under {output_uri}: rerun the same command to resume"
            ) from exc
        _write_part(_part_uri(output_uri, part.index), part, outcome)
        return len(part.images)

    try:
        with ThreadPoolExecutor(max_workers=options.concurrency) as pool:
            try:
                parts = _chunked(itertools.chain([first], stream), options.part_size)
                for index, part_images in enumerate(parts):
                    count = index + 1
                    part_uri = _part_uri(output_uri, index)
                    if storage.exists(part_uri):
                        _check_part(part_uri, part_images)
                        progress.skip(len(part_images))
                        resumed += 1
                        continue
                    futures = [pool.submit(work, chunk) for chunk in _chunked(part_images, batch_size)]
                    in_flight.append(_PartInFlight(index, part_images, time.time(), futures))
                    if len(in_flight) > 1:
                        processed += finish_oldest()
                while in_flight:
                    processed += finish_oldest()
            finally:
                for part in in_flight:  # after a failure: do not wait for requests nobody will keep
                    for future in part.futures:
                        future.cancel()
    finally:
        progress.close()
        connections.close()
    if storage.exists(_part_uri(output_uri, count)):
        raise InputChanged(f"{input_uri} now holds fewer images than when {output_uri} was started")
    seconds = time.monotonic() - started
    return {
        "parts": count,
        "parts_resumed": resumed,
        "images_sent": processed,
        "seconds": round(seconds, 3),
        "images_per_second": round(processed / seconds, 1) if seconds > 0 else 0.0,
    }


@dataclass
class _PartInFlight:
    index: int
    images: list[str]
    started: float
    futures: list[Future[Outcome]]


def _write_part(part_uri: str, part: _PartInFlight, outcome: Outcome) -> None:
    record = {
        "first": part.images[0],
        "last": part.images[-1],
        "count": len(part.images),
        "started": part.started,
        "finished": time.time(),
        **asdict(outcome),
    }
    if not storage.create(part_uri, json.dumps(record).encode()):
        # Another attempt (a zombie task, a second client) finished it first: keep theirs.
        log.warning("%s was written by another run meanwhile; keeping that one", part_uri)


def _record_inputs(output_uri: str, input_uri: str, part_size: int) -> None:
    """The first run records what it reads; a rerun must read the same, cut the same way."""
    inputs_uri = join_uri(output_uri, INPUTS)
    wanted = {"input": input_uri, "part_size": part_size}
    if not storage.exists(inputs_uri):
        storage.write_text(inputs_uri, json.dumps(wanted))
        return
    recorded = json.loads(storage.read_text(inputs_uri))
    if recorded != wanted:
        raise InputChanged(
            f"{output_uri} holds a run over {recorded['input']} in parts of {recorded['part_size']}; "
            f"use another output for {input_uri} in parts of {part_size}"
        )


def _check_part(part_uri: str, images: list[str]) -> None:
    part = json.loads(storage.read_text(part_uri))
    if (part["first"], part["last"], part["count"]) != (images[0], images[-1], len(images)):
        raise InputChanged(
            f"{part_uri} covers {part['first']} .. {part['last']} ({part['count']} images) but the input "
            f"now lists {images[0]} .. {images[-1]} ({len(images)}): the input changed, use another output"
        )


def _part_uri(output_uri: str, index: int) -> str:
    return join_uri(output_uri, "parts", f"part-{index:05d}.json")


def _chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _classify_chunk(triton: Triton, info: ModelInfo, uris: list[str], options: BatchOptions) -> Outcome:
    """One request's worth of images: read (and decode) them here, in the worker thread."""
    outcome = Outcome()
    loaded: list[tuple[str, Any]] = []
    for uri in uris:
        try:
            data = storage.read_bytes(uri)
            loaded.append((uri, data if options.encoded else decode_rgb(data, info.image_size)))
        except (ImageDecodeError, OSError) as exc:
            outcome.failures.append({"image": uri, "reason": str(exc)})
        except Exception as exc:  # a storage error for one object (e.g. deleted meanwhile)
            outcome.failures.append({"image": uri, "reason": f"cannot read: {type(exc).__name__}: {exc}"})
    if not loaded:
        return outcome
    try:
        answers = _request(triton, info, loaded, options)
    except InferenceServerException as exc:
        if not (options.encoded and is_refusal(exc)):
            raise
        # The ensemble refused the request: one of its files does not decode. Find which.
        for single in loaded:
            try:
                outcome.add(_predictions([single], _request(triton, info, [single], options), triton))
            except InferenceServerException as single_exc:
                if not is_refusal(single_exc):
                    raise
                reason = single_exc.message() or str(single_exc)
                outcome.failures.append({"image": single[0], "reason": reason})
        return outcome
    outcome.add(_predictions(loaded, answers, triton))
    return outcome


def _request(triton: Triton, info: ModelInfo, loaded: list[tuple[str, Any]], options: BatchOptions) -> Any:
    what = f"inference on {len(loaded)} images"
    # Every class's score, not only the top one: the report's log-loss and ROC AUC need them.
    classes = info.num_classes
    if options.encoded:
        blobs = [data for _, data in loaded]
        return options.retry.call(lambda: classify_encoded(triton, info.name, blobs, top_k=classes), what)
    batch = np.stack([array for _, array in loaded])
    return options.retry.call(lambda: classify(triton, info, batch, top_k=classes), what)


def _predictions(loaded: list[tuple[str, Any]], answers: Any, triton: Triton) -> Outcome:
    outcome = Outcome(latencies_ms=[round(triton.last_latency_s * 1000, 3)])
    for (uri, _), ranked in zip(loaded, answers, strict=True):
        top = ranked[0]
        outcome.predictions.append(
            {
                "image": uri,
                "label": top.label,
                "confidence": round(top.confidence, 6),
                "scores": dict(sorted((entry.label, round(entry.confidence, 6)) for entry in ranked)),
            }
        )
    return outcome


def merge_outputs(
    output_dirs: Iterable[str],
    output_uri: str,
    *,
    input_uri: str,
    options: BatchOptions,
    class_names: Collection[str] = (),
    sections: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stream every part under `output_dirs` into predictions.jsonl, report.json and report.html;
    `sections` are added to the report as they are (this run's figures, the serving figures)."""
    builder = ReportBuilder(class_names)
    with storage.open_writer(join_uri(output_uri, "predictions.jsonl")) as predictions:
        for output_dir in output_dirs:
            for part_uri in storage.list_files(join_uri(output_dir, "parts")):
                part = json.loads(storage.read_text(part_uri))
                for prediction in part["predictions"]:
                    predictions.write((json.dumps(prediction) + "\n").encode())
                builder.add_part(part)
    report = builder.report(
        input_uri=input_uri,
        model_name=options.model_name,
        settings={
            "protocol": options.protocol,
            "encoded": options.encoded,
            "concurrency": options.concurrency,
            "batch_size": options.batch_size or "model's preferred",
        },
    )
    report.update(sections or {})
    storage.write_text(join_uri(output_uri, "report.json"), json.dumps(report, indent=2))
    thumbnails = {uri: preview for uri in gallery_images(report) if (preview := _thumbnail(uri))}
    storage.write_text(join_uri(output_uri, "report.html"), render_html(report, thumbnails))
    log.info(
        "%d predicted, %d failed (%.1f img/s over %.1f s); report at %s",
        report["succeeded"], report["failed"], report["images_per_second"], report["seconds"], output_uri,
    )  # fmt: skip
    return report


def write_shards(input_uri: str, shards_uri: str, images_per_shard: int = 0) -> list[str]:
    """Stream the listing into shard files (one image URI per line) for the DAG's mapped tasks;
    `shards.json`, written last, records them and the files the listing left out.
    `images_per_shard` 0: `shard_size` of the images listed.

    Idempotent: once `shards.json` exists the same shards are returned.
    """
    index_uri = join_uri(shards_uri, SHARDS)
    if storage.exists(index_uri):
        recorded = json.loads(storage.read_text(index_uri))
        if recorded["input"] == input_uri and recorded["images_per_shard"] == images_per_shard:
            return list(recorded["shards"])
    left_out = LeftOut()
    # The listing is counted before it is cut, so it is spooled to a local file, not held.
    with tempfile.TemporaryFile("w+") as listing:
        count = sum(listing.write(f"{image}\n") > 0 for image in iter_images(input_uri, left_out))
        if not count:
            raise ValueError(f"no images found under {input_uri}")
        size = images_per_shard or shard_size(count)
        listing.seek(0)
        shards = []
        for index, lines in enumerate(_chunked(listing, size)):
            shard_uri = join_uri(shards_uri, f"shard-{index:05d}.txt")
            storage.write_text(shard_uri, "".join(lines))
            shards.append(shard_uri)
    recorded = {
        "input": input_uri,
        "images_per_shard": images_per_shard,
        "images": count,
        "shard_size": size,
        "shards": shards,
        "left_out": left_out.to_dict(),
    }
    storage.write_text(index_uri, json.dumps(recorded))
    log.info("%d images in %d shards of up to %d", count, len(shards), size)
    return shards


def shard_size(images: int) -> int:
    """As many shards as run at once, but none under MIN_IMAGES_PER_SHARD: on one CPU server a
    second shard adds no throughput (one client keeps every model instance busy), only its
    start; on more servers, each of up to SHARD_SLOTS shards keeps its own requests in flight."""
    shards = max(1, min(SHARD_SLOTS, images // MIN_IMAGES_PER_SHARD))
    return math.ceil(images / shards)


def shards_left_out(shards_uri: str) -> dict[str, Any]:
    """What the listing `write_shards` made left out, for the run's report."""
    return dict(json.loads(storage.read_text(join_uri(shards_uri, SHARDS)))["left_out"])


def shard_images(shard_uri: str) -> list[str]:
    return storage.read_text(shard_uri).splitlines()


def shard_output(output_uri: str, shard_uri: str) -> str:
    return join_uri(output_uri, "shards", PurePosixPath(shard_uri).stem)


def _thumbnail(uri: str) -> str | None:
    """The gallery's preview of `uri`; an image that cannot be read is shown without one."""
    try:
        return thumbnail(storage.read_bytes(uri))
    except OSError as exc:
        log.warning("no thumbnail for %s: %s", uri, exc)
        return None
