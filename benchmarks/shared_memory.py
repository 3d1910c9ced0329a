"""Is Triton's system shared-memory extension worth adding to the client?

A client on the same host as the server can hand tensors over in a /dev/shm region
instead of in the request body. The same minimal loop (read, decode, one request of
8 images) runs with the tensor on the wire and in shared memory, HTTP and gRPC, against
one local tritonserver (2 instances x 1 thread, the inference benchmark's best), in
interleaved rounds with the in-process ONNX Runtime ceiling measured in every round:
this machine's speed drifts by 10-15% within minutes.

    .venv/bin/python -m benchmarks.shared_memory [--images 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from benchmarks.inference import IMAGE_SIZE, ort_ceiling, served_small_model
from benchmarks.processes import in_clean_process
from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from client.triton import PROTOCOLS, InferenceProtocol
from core.images import decode_rgb

BATCH = 8


class _Worker:
    """One connection per thread; with `use_shm`, one registered region per thread too."""

    def __init__(self, url: str, protocol: InferenceProtocol, use_shm: bool, admin: dict[str, str]) -> None:
        self.module: Any = httpclient if protocol == "http" else grpcclient
        self.client = self.module.InferenceServerClient(url)
        self.binary = {"binary_data": True} if protocol == "http" else {}
        self.region: Any = None
        if use_shm:
            self.name = f"bench-{uuid.uuid4().hex[:12]}"
            size = BATCH * IMAGE_SIZE * IMAGE_SIZE * 3
            self.region = shm.create_shared_memory_region(self.name, f"/{self.name}", size)
            # Registering shared memory is one of Triton's control APIs: it takes the admin key.
            self.client.register_system_shared_memory(self.name, f"/{self.name}", size, headers=admin)

    def classify(self, files: list[Path]) -> np.ndarray:
        images = np.stack([decode_rgb(path.read_bytes(), IMAGE_SIZE) for path in files])
        model_input = self.module.InferInput("image", list(images.shape), "UINT8")
        if self.region is None:
            model_input.set_data_from_numpy(images, **self.binary)
        else:
            shm.set_shared_memory_region(self.region, [images])
            model_input.set_shared_memory(self.name, images.nbytes)
        output = self.module.InferRequestedOutput("probabilities", class_count=1, **self.binary)
        result = self.client.infer("dogs_cats", [model_input], outputs=[output])
        return np.asarray(result.as_numpy("probabilities"))

    def close(self) -> None:
        """Called from the main thread once the pool is done, after the regions are unregistered."""
        if self.region is not None:
            shm.destroy_shared_memory_region(self.region)
        self.client.close()


def images_per_second(
    files: list[Path],
    make_worker: Callable[[], _Worker],
    concurrency: int,
    http_url: str,
    admin: dict[str, str],
) -> float:
    workers: list[_Worker] = []
    local = threading.local()

    def run(chunk: list[Path]) -> np.ndarray:
        if not hasattr(local, "worker"):
            local.worker = make_worker()
            workers.append(local.worker)
        return local.worker.classify(chunk)

    chunks = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
    try:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(run, chunks[:concurrency]))  # warm up: connections and regions made
            started = time.perf_counter()
            answers = list(pool.map(run, chunks))
            seconds = time.perf_counter() - started
    finally:
        # A tritonclient connection belongs to the thread that made it: unregister on a new one.
        control = httpclient.InferenceServerClient(http_url)
        control.unregister_system_shared_memory(headers=admin)
        control.close()
        for worker in workers:
            worker.close()
    assert sum(len(answer) for answer in answers) == len(files)
    return len(files) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    ratios: dict[str, list[float]] = {}
    speeds: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-shm-") as tmp,
        served_small_model(args.source, args.images, Path(tmp)) as (files, model_dir, state),
    ):
        urls = {"http": state.http_url, "grpc": f"127.0.0.1:{state.grpc_port}"}
        for round_number in range(args.rounds):
            ceiling = in_clean_process(
                ort_ceiling, folder=str(Path(tmp) / "images"), onnx=f"{model_dir}/model.onnx",
                batch=BATCH, workers=2, threads=1,
            )["img_s"]  # fmt: skip
            speeds.setdefault("ceiling (in-process ORT)", []).append(ceiling)
            for protocol in PROTOCOLS:
                for use_shm in (False, True):
                    for concurrency in (4, 8):
                        carried = "shared memory" if use_shm else "tensor on the wire"
                        name = f"{protocol}, {carried}, {concurrency} in flight"

                        def worker(
                            protocol: InferenceProtocol = protocol, use_shm: bool = use_shm
                        ) -> _Worker:
                            return _Worker(urls[protocol], protocol, use_shm, state.admin_headers(protocol))

                        speed = images_per_second(
                            files, worker, concurrency, urls["http"], state.admin_headers()
                        )
                        speeds.setdefault(name, []).append(speed)
                        ratios.setdefault(name, []).append(speed / ceiling)
                        print(f"round {round_number + 1}: {name}: {speed:.0f} img/s", file=sys.stderr)
    print(
        f"| client ({len(files)} real JPEGs, bs {BATCH}) | img/s (median, min-max) | vs ceiling, same round |"
    )
    print("|---|---|---|")
    for name, values in speeds.items():
        ratio = f"{statistics.median(ratios[name]):.2f}" if name in ratios else "1.00"
        print(f"| {name} | {statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f}) | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
