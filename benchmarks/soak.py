"""Soak: continuous load on the local tritonserver, errors counted, memory sampled.

    .venv/bin/python -m benchmarks.soak [--minutes 20] [--threads 4] [--batch 8]

Worker threads (one Triton connection each) read, decode and classify real
images from the shared dataset in a loop; every `--sample-s` seconds the
tritonserver's RSS (with its python-backend stubs) and this client's RSS are
recorded. Prints a Markdown table for benchmarks/README.md. Memory is "flat"
when the last sample is within a few percent of the one after warm-up.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.inference import served_small_model
from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from client.triton import Triton, classify, model_info
from core.images import decode_rgb


def _rss_mib(process: psutil.Process, with_children: bool) -> float:
    processes = [process, *(process.children(recursive=True) if with_children else [])]
    return sum(p.memory_info().rss for p in processes) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sample-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
        served_small_model(args.source, args.images, Path(tmp)) as (files, _, state),
    ):
        counts = {"requests": 0, "images": 0, "errors": 0}
        lock, stop = threading.Lock(), threading.Event()

        def worker(offset: int) -> None:
            triton = Triton(state.http_url, "http", timeout_s=30)
            info = model_info(triton)
            chunks = itertools.cycle(range(offset * args.batch, len(files), args.batch * args.threads))
            while not stop.is_set():
                start = next(chunks)
                batch = files[start : start + args.batch]
                try:
                    images = np.stack([decode_rgb(path.read_bytes(), info.image_size) for path in batch])
                    classify(triton, info, images)
                    with lock:
                        counts["requests"] += 1
                        counts["images"] += len(batch)
                except Exception as exc:
                    with lock:
                        counts["errors"] += 1
                    print(f"error: {exc}", file=sys.stderr)

        workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.threads)]
        for thread in workers:
            thread.start()
        server_process, client_process = psutil.Process(state.pid), psutil.Process()
        samples = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < args.minutes * 60:
            time.sleep(min(args.sample_s, max(args.minutes * 60 - elapsed, 0.1)))
            with lock:
                snapshot = dict(counts)
            samples.append(
                (
                    time.monotonic() - started,
                    snapshot,
                    _rss_mib(server_process, True),
                    _rss_mib(client_process, False),
                )
            )
            print(f"{samples[-1][0]:.0f} s: {snapshot}", file=sys.stderr, flush=True)
        stop.set()
        for thread in workers:
            thread.join(timeout=60)
    print("| minute | requests | images | errors | img/s (since last) | server RSS MiB | client RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    previous_images, previous_t = 0, 0.0
    for seconds, snapshot, server_mib, client_mib in samples:
        rate = (snapshot["images"] - previous_images) / (seconds - previous_t)
        previous_images, previous_t = snapshot["images"], seconds
        print(
            f"| {seconds / 60:.1f} | {snapshot['requests']} | {snapshot['images']} | {snapshot['errors']} "
            f"| {rate:.0f} | {server_mib:.0f} | {client_mib:.0f} |"
        )
    first, last = samples[min(1, len(samples) - 1)], samples[-1]
    print(
        f"\nserver RSS from minute {first[0] / 60:.0f} to the end: {first[2]:.0f} -> {last[2]:.0f} MiB "
        f"({(last[2] / first[2] - 1) * 100:+.1f}%); client: {first[3]:.0f} -> {last[3]:.0f} MiB "
        f"({(last[3] / first[3] - 1) * 100:+.1f}%); errors: {last[1]['errors']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
