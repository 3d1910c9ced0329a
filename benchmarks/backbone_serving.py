"""What each pretrained backbone costs to serve: EfficientNet-Lite0, -Lite1 and -Lite2, FP32 and
their INT8 twins, each served by the local tritonserver and called by our batch client.

    .venv/bin/python -m benchmarks.backbone_serving [--images 600] [--rounds 3]

The question it answers (issue #26, item 8): is a larger backbone's served CPU path, at the
precision a CPU server would pick, at least as fast as today's default (Lite0 served at FP32)?
Each model is exported as training exports it (random head, real backbone, the INT8 twin
calibrated on the same images), at the backbone's own resolution inside. All six servers run at
once, at the setting that served Lite0 best in `benchmarks.inference` (2 instances x 1 thread;
HTTP, batches of 8, 4 in flight); then every path is measured once per round, in a fresh
interpreter, the rounds interleaved, and each path's figure is divided by Lite0 FP32's in the same
round. Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import get_args

from benchmarks.inference import export_model, link_images, triton_client, triton_serving, warm_up
from benchmarks.processes import in_clean_process
from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core.settings import Precision, PretrainedChoice

SERVER = (2, 1)  # instances x ORT threads: Lite0's best in benchmarks.inference
CLIENT = {"protocol": "http", "batch_size": 8, "concurrency": 4}
BASELINE = ("efficientnet_lite0", "fp32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    paths = [(model, precision) for model in get_args(PretrainedChoice) for precision in get_args(Precision)]
    rounds: list[dict[tuple[str, str], float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp, contextlib.ExitStack() as servers:
        work = Path(tmp)
        images = str(link_images(args.source, work / "images", args.images))
        urls = {}
        for model, precision in paths:
            if precision == "fp32":
                print(f"{model}: exporting", file=sys.stderr, flush=True)
                in_clean_process(export_model, model=model, folder=str(work / model), calibration=images)
            state = servers.enter_context(
                triton_serving(str(work / model), work, *SERVER, precision=precision)
            )
            urls[model, precision] = {"http_url": state.http_url, "grpc_url": f"127.0.0.1:{state.grpc_port}"}
            warm_up(urls[model, precision], images, work)
        for number in range(1, args.rounds + 1):
            figures = {
                path: in_clean_process(
                    triton_client, **urls[path], folder=images, work=str(work), options=CLIENT
                )["img_s"]
                for path in paths
            }
            print(f"round {number}: {figures}", file=sys.stderr, flush=True)
            rounds.append(figures)
    print(f"\n{args.images} images, {len(rounds)} interleaved rounds; img/s, and / Lite0 FP32 in its round\n")
    print("| backbone | precision | img/s (median) | / Lite0 FP32 (median) | / Lite0 FP32 per round |")
    print("|---|---|---|---|---|")
    for path in paths:
        ratios = [figures[path] / figures[BASELINE] for figures in rounds]
        speed = statistics.median(figures[path] for figures in rounds)
        each = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"| {path[0]} | {path[1].upper()} | {speed:.0f} | {statistics.median(ratios):.2f} | {each} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
