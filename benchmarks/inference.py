"""Batch inference side by side, one run, one machine, the same real images and models:

1. ceiling: in-process ONNX Runtime over the files, decode included (best batch and threads);
2. our client to the local tritonserver, HTTP and gRPC (best batch, concurrency, instances);
3. the peers' design: per-image FastAPI + ONNX Runtime under uvicorn (workers, threads and
   client concurrency swept, best kept);
4. end to end: files in a bucket to report through the DAG's batch stage (shards, merge);
plus, for the default model, its INT8 twin in-process beside FP32; Triton's own split of each
request (queue, input, inference, output); perf_analyzer against the same server; and the
client's peak RSS for 2k vs 20k images.

    .venv/bin/python -m benchmarks.inference [--images 2000] [--efficientnet-images 600]

Every measured path runs in a fresh interpreter of its own (`in_clean_process`), and so does
every Keras export: this process loads neither TensorFlow nor ONNX Runtime. The earlier version
ran every path in one long-lived process, and its in-process ceiling came out at 327-409 img/s
against ~920 in a fresh process. Loading TensorFlow is not the cause: the small model's rounds
also measure the ceiling right after a Keras export in the same process (`ceiling_after_export`),
and it runs at 0.98 of the fresh-process ceiling (median of 3 rounds, 2026-12-02). What the old
process had in addition were the earlier paths' leftovers (client threads and gRPC channels,
ORT sessions, uvicorn peers); one process per path rules all of them out.
Models are built with fixed random weights (the pretrained backbone with its real weights) and
exported to ONNX as training does: the compute per image is what a trained model costs, and no
benchmark depends on accuracy. Prints Markdown tables for benchmarks/README.md and writes the
raw figures as JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import numpy as np

from benchmarks.processes import in_clean_process
from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from client.batch import BatchOptions, merge_outputs, run_batch, shard_images, shard_output, write_shards
from client.triton import PROTOCOLS
from core.constants import INPUT_NAME, INT8_MODEL_FILE, MODEL_NAME, OUTPUT_NAME
from core.images import decode_rgb
from core.settings import ModelChoice, ServingPrecision, TrainingParams, is_pretrained
from deploy.local_triton import ServerState, pytriton_root
from harness.serving import free_port, serving_model_folder

IMAGE_SIZE = TrainingParams().image_size
ROUNDS = 3  # head-to-head reruns of the best settings, interleaved
Row = dict[str, Any]


def link_images(source: Path, target: Path, count: int) -> Path:
    """`count` real JPEGs, half per class, as symlinks (the client follows them)."""
    for label in ("Cat", "Dog"):
        folder = target / label
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((source / label).glob("*.jpg"))[: count // 2]:
            (folder / path.name).symlink_to(path.resolve())
    return target


def _files(folder: str) -> list[Path]:
    return sorted(Path(folder).rglob("*.jpg"))


def export_model(model: ModelChoice, folder: str, calibration: str = "") -> str:
    """A model folder as training writes it (model.onnx, labels.txt, metrics.json), plus the
    INT8 twin when `calibration` names a folder of images to calibrate on."""
    import keras

    from training.export import export_onnx
    from training.models import build_model

    out = Path(folder)
    keras.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(build_model(model, IMAGE_SIZE, 2), IMAGE_SIZE, out / "model.onnx")
    (out / "labels.txt").write_text("Cat\nDog\n")
    (out / "metrics.json").write_text(json.dumps({"image_size": IMAGE_SIZE, "labels": ["Cat", "Dog"]}))
    if calibration:
        from training.quantize import calibration_sample, quantize_int8

        # The same class-balanced sample training calibrates on (the folders are class names).
        entries = [{"path": path, "label": path.parent.name} for path in _files(calibration)]
        images = [decode_rgb(entry["path"].read_bytes(), IMAGE_SIZE) for entry in calibration_sample(entries)]
        batches = [np.stack(images[i : i + 32]) for i in range(0, len(images), 32)]
        quantize_int8(out / "model.onnx", out / INT8_MODEL_FILE, batches)
    return str(out)


def _percentiles(latencies_s: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(latencies_s) * 1000, [50, 99])
    return round(float(p50), 1), round(float(p99), 1)


def ort_ceiling(folder: str, onnx: str, batch: int, workers: int, threads: int) -> Row:
    """Workers each with a session of `threads` intra-op threads; each reads, decodes and runs a batch."""
    import onnxruntime as ort

    files = _files(folder)
    local = threading.local()

    def session() -> ort.InferenceSession:
        if not hasattr(local, "session"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            local.session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        return local.session

    def run(chunk: list[Path]) -> float:
        started = time.perf_counter()
        images = np.stack([decode_rgb(path.read_bytes(), IMAGE_SIZE) for path in chunk])
        session().run([OUTPUT_NAME], {INPUT_NAME: images})
        return time.perf_counter() - started

    chunks = [files[i : i + batch] for i in range(0, len(files), batch)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, chunks[:workers]))  # warm up: sessions created, caches filled
        started = time.perf_counter()
        latencies = list(pool.map(run, chunks))
        seconds = time.perf_counter() - started
    p50, p99 = _percentiles(latencies)
    return {
        "config": f"bs {batch}, {workers} worker x {threads} thread",
        "img_s": len(files) / seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "setting": [batch, workers, threads],
    }


def ceiling_after_export(
    model: ModelChoice, folder: str, export_to: str, batch: int, workers: int, threads: int
) -> Row:
    """The earlier benchmark's situation: the ceiling measured in the process that has just built
    and exported the model with TensorFlow (which stays loaded, with its thread pools)."""
    return ort_ceiling(folder, f"{export_model(model, export_to)}/model.onnx", batch, workers, threads)


@contextmanager
def triton_serving(
    model_dir: str, work: Path, instances: int, threads: int, precision: ServingPrecision = "auto"
) -> Iterator[ServerState]:
    with serving_model_folder(
        model_dir, work, max_batch_size=32, instances=instances, ort_threads=threads, precision=precision
    ) as (
        server,
        _,
    ):
        state = server.state()
        assert state is not None
        yield state


@contextmanager
def served_small_model(source: Path, count: int, work: Path) -> Iterator[tuple[list[Path], str, ServerState]]:
    """`count` real JPEGs and the small model served at its best setting (2 instances x 1 thread)."""
    folder = link_images(source, work / "images", count)
    model_dir = in_clean_process(export_model, model="small", folder=str(work / "small"))
    with triton_serving(model_dir, work, 2, 1) as state:
        yield _files(str(folder)), model_dir, state


def _server_split(http_url: str) -> dict[str, float]:
    """Triton's statistics extension: cumulative counts and nanoseconds per stage of dogs_cats."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{MODEL_NAME}/stats", timeout=10) as response:
        stats = json.load(response)["model_stats"]
    totals: dict[str, float] = {"requests": 0, "executions": 0}
    for version in stats:
        inference = version["inference_stats"]
        totals["requests"] += inference["success"]["count"]
        totals["executions"] += version["execution_count"]
        for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
            totals[stage] = totals.get(stage, 0) + inference[stage]["ns"]
    return totals


def triton_client(http_url: str, grpc_url: str, folder: str, work: str, options: dict[str, Any]) -> Row:
    """Our batch client over `folder`, and where Triton says each request spent its time."""
    sent = BatchOptions(**options)
    url = http_url if sent.protocol == "http" else grpc_url
    output = Path(tempfile.mkdtemp(dir=work))
    before = _server_split(http_url)
    report = run_batch(url, folder, str(output), sent)
    after = _server_split(http_url)
    shutil.rmtree(output)
    requests = max(after["requests"] - before["requests"], 1)
    split_ms = {
        stage: round((after[stage] - before[stage]) / requests / 1e6, 2)
        for stage in ("queue", "compute_input", "compute_infer", "compute_output")
    }
    latency = report["request_latency_ms"]
    encoded = ", encoded (server decodes)" if sent.encoded else ""
    return {
        "config": f"{sent.protocol}, bs {sent.batch_size}, {sent.concurrency} in flight{encoded}",
        "img_s": report["this_run"]["images_per_second"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "options": options,
        "server_split_ms": split_ms,
        "images_per_execution": round(
            report["images"] / max(after["executions"] - before["executions"], 1), 1
        ),
    }


def peer_service(folder: str, onnx: str, workers: int, threads: int, concurrency: int) -> Row:
    """uvicorn + FastAPI, one multipart request per image, `concurrency` client threads."""
    files = _files(folder)
    port = free_port()
    env = {**os.environ, "PEER_MODEL": onnx, "PEER_THREADS": str(threads)}
    command = ["uvicorn", "benchmarks.peer_service:app", "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen(
        [sys.executable, "-m", *command, "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/docs")
        import requests

        local = threading.local()

        def post(path: Path) -> float:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            started = time.perf_counter()
            with path.open("rb") as image:
                response = local.session.post(f"http://127.0.0.1:{port}/predict", files={"file": image})
            response.raise_for_status()
            return time.perf_counter() - started

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, files[: concurrency * 2]))
            started = time.perf_counter()
            latencies = list(pool.map(post, files))
            seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    p50, p99 = _percentiles(latencies)
    return {
        "config": f"{workers} uvicorn worker x {threads} ORT thread, {concurrency} client threads",
        "img_s": len(files) / seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "setting": [workers, threads, concurrency],
    }


def _wait_for(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def dag_batch_stage(
    http_url: str, grpc_url: str, folder: str, work: str, images_per_shard: int, options: dict[str, Any]
) -> Row:
    """What the DAG's list_shards -> classify_shard[] -> merge_predictions do, shards 2 at a time
    (the local executor's parallelism on 2 cores), files in a local bucket to report."""
    sent = BatchOptions(**options)
    url = http_url if sent.protocol == "http" else grpc_url
    output = tempfile.mkdtemp(dir=work)  # a fresh bucket folder: a rerun must not resume
    started = time.perf_counter()
    shards = write_shards(folder, f"{output}/shards", images_per_shard)

    def classify(shard: str) -> str:
        out = shard_output(output, shard)
        run_batch(url, shard, out, sent, images=shard_images(shard))
        return out

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(classify, shards))
    report = merge_outputs(outputs, output, input_uri=folder, options=sent)
    seconds = time.perf_counter() - started
    shutil.rmtree(output)
    return {
        "config": f"{len(shards)} shards of {images_per_shard}, 2 at a time, {sent.protocol} bs "
        f"{sent.batch_size or 'preferred'}, {sent.concurrency} in flight each",
        "img_s": report["images"] / seconds,
        "p50_ms": report["request_latency_ms"]["p50"],
        "p99_ms": report["request_latency_ms"]["p99"],
    }


def perf_analyzer(state: ServerState, work: Path) -> list[Row]:
    """perf_analyzer from the tritonclient 2.51.0 wheel (newer builds need glibc 2.38)."""
    binary = _perf_analyzer_binary(work)
    rows = []
    for protocol, url in (("http", state.http_url), ("grpc", f"127.0.0.1:{state.grpc_port}")):
        result = subprocess.run(
            [
                str(binary),
                "-m",
                MODEL_NAME,
                "-u",
                url,
                "-i",
                protocol,
                "-b",
                "8",
                "--concurrency-range",
                "1:4:1",
                "--measurement-interval",
                "3000",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)},
            timeout=600,
        )
        for concurrency, throughput, latency in re.findall(
            r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec", result.stdout
        ):
            rows.append(
                {
                    "config": f"perf_analyzer {protocol}, bs 8, concurrency {concurrency}",
                    "img_s": float(throughput),
                    "p50_ms": None,
                    "p99_ms": round(int(latency) / 1000, 1),
                }
            )
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
    return rows


def _perf_analyzer_binary(work: Path) -> Path:
    wheels = work / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "tritonclient==2.51.0",
            "-d",
            str(wheels),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("tritonclient-2.51.0-*.whl")
    folder = work / "perf_analyzer"
    with zipfile.ZipFile(wheel) as archive:
        archive.extract("tritonclient-2.51.0.data/data/bin/perf_analyzer", folder)
    binary = folder / "tritonclient-2.51.0.data" / "data" / "bin" / "perf_analyzer"
    binary.chmod(0o755)
    libs = pytriton_root().parent.parent / "nvidia_pytriton.libs"
    for wanted in ("libb64.so.0d", "libcudart.so.12"):
        (match,) = libs.glob(wanted.split(".so")[0] + "*")
        (binary.parent / wanted).symlink_to(match)
    return binary


def client_peak_rss(state: ServerState, folder: Path, work: Path) -> float:
    """Peak RSS (MiB) of `python -m client batch` over `folder`, in a process of its own."""
    output = work / f"rss-{folder.name}"
    code = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            sys.executable,
            "-m",
            "client",
            "--url",
            state.http_url,
            "batch",
            "--input",
            str(folder),
            "--output",
            str(output),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip()) / 1024


def best(rows: list[Row]) -> Row:
    return leaders(rows, count=1)[0]


def leaders(rows: list[Row], count: int = 2) -> list[Row]:
    """A path's best settings in its sweep. One sweep ranks close settings by noise on this
    machine, so each is rerun in every round and the round counts the faster."""
    return sorted(rows, key=lambda row: row["img_s"], reverse=True)[:count]


def warm_up(urls: dict[str, str], images: str, work: Path) -> None:
    """One untimed pass over the images on a freshly started server, as the ceiling warms its
    sessions: the first requests pay ONNX Runtime's first run of each batch shape."""
    in_clean_process(triton_client, **urls, folder=images, work=str(work), options={})


def sweep(name: str, rows: list[Row], results: dict[str, list[Row]]) -> Row:
    results[name] = rows
    for row in rows:
        print(f"  {name}: {row['config']}: {row['img_s']:.0f} img/s", file=sys.stderr, flush=True)
    return best(rows)


def benchmark_model(model: ModelChoice, folder: Path, work: Path, full: bool) -> dict[str, Any]:
    """Sweep each path's settings, then rerun the best of each head to head in interleaved rounds."""
    pretrained = is_pretrained(model)
    model_dir = in_clean_process(
        export_model, model=model, folder=str(work / model), calibration=str(folder) if pretrained else ""
    )
    onnx = f"{model_dir}/model.onnx"
    images = str(folder)
    results: dict[str, list[Row]] = {}
    # 3 workers x 1 thread: one decodes while two run the model (more threads than cores).
    ceiling_runs = [(b, w, max(2 // w, 1)) for b in ((1, 8, 32) if full else (8, 32)) for w in (1, 2, 3)]
    ceiling_rows = [
        in_clean_process(ort_ceiling, folder=images, onnx=onnx, batch=b, workers=w, threads=t)
        for b, w, t in ceiling_runs
    ]
    ceiling = sweep("ceiling", ceiling_rows, results)
    triton_rows = []
    # (8, 2): one request per instance of a 2-instance server, none queued behind another.
    client_settings = [(8, 2), (8, 4), (32, 2), (8, 8)] if full else [(8, 2), (8, 4), (32, 2)]
    for instances, threads in ((1, 2), (2, 1)):
        with triton_serving(model_dir, work, instances, threads) as state:
            urls = {"http_url": state.http_url, "grpc_url": f"127.0.0.1:{state.grpc_port}"}
            warm_up(urls, images, work)
            sent = [
                {"protocol": p, "batch_size": b, "concurrency": c}
                for p in PROTOCOLS
                for b, c in client_settings
            ]
            if full:
                sent.append({"batch_size": 8, "concurrency": 4, "encoded": True})
            for options in sent:
                row = in_clean_process(triton_client, **urls, folder=images, work=str(work), options=options)
                row["config"] += f", {instances} instance x {threads} thread"
                triton_rows.append({**row, "server": [instances, threads]})
    triton = sweep("triton", triton_rows, results)
    peer_settings = [
        (w, t, c) for w in (1, 2) for t in (1, 2) if w * t <= 2 for c in ((4, 8) if full else (4,))
    ]
    peer_rows = [
        in_clean_process(peer_service, folder=images, onnx=onnx, workers=w, threads=t, concurrency=c)
        for w, t, c in peer_settings
    ]
    peer = sweep("peer", peer_rows, results)
    extra: dict[str, Any] = {}
    # The DAG's params choose these two; batch size and concurrency are the client's defaults.
    dag_options = {key: value for key, value in triton["options"].items() if key in ("protocol", "encoded")}
    with triton_serving(model_dir, work, *triton["server"]) as state:
        urls = {"http_url": state.http_url, "grpc_url": f"127.0.0.1:{state.grpc_port}"}
        warm_up(urls, images, work)
        stage = {
            **urls,
            "folder": images,
            "work": str(work),
            "images_per_shard": 500,
            "options": dag_options,
        }
        end_to_end = sweep("end_to_end", [in_clean_process(dag_batch_stage, **stage)], results)
        if full:
            extra["perf_analyzer"] = perf_analyzer(state, work)
        # The sweeps ran minutes apart, and this machine drifts by 10 % in minutes: the ratios
        # come from the best settings rerun side by side, round after round, each in its own process.
        on_files = {"folder": images, "onnx": onnx}
        settings = [_named(row, "batch", "workers", "threads") for row in leaders(ceiling_rows)]
        ceilings = [{**on_files, **setting} for setting in settings]
        served = [row for row in triton_rows if row["server"] == triton["server"]]
        paths: dict[str, list[tuple[Callable[..., Any], dict[str, Any]]]] = {
            "ceiling": [(ort_ceiling, arguments) for arguments in ceilings],
            "triton": [
                (triton_client, {**urls, "folder": images, "work": str(work), "options": row["options"]})
                for row in leaders(served)
            ],
            "peer": [
                (peer_service, {**on_files, **_named(row, "workers", "threads", "concurrency")})
                for row in leaders(peer_rows)
            ],
            "end_to_end": [(dag_batch_stage, stage)],
        }
        if pretrained:
            int8 = f"{model_dir}/{INT8_MODEL_FILE}"
            paths["ceiling_int8"] = [(ort_ceiling, {**arguments, "onnx": int8}) for arguments in ceilings]
        else:
            setting = _named(ceiling, "batch", "workers", "threads")
            again = str(work / f"{model}-again")
            paths["ceiling_after_tf"] = [
                (ceiling_after_export, {"model": model, "folder": images, "export_to": again, **setting})
            ]
        # The pretrained model's INT8 twin served as a CPU server serves it by default once
        # training's verdict allows (a verdict needs a trained model's test split: these heads
        # are untrained, so the twin is asked for by name).
        instances, threads = triton["server"]
        int8_serving = (
            triton_serving(model_dir, work, instances, threads, precision="int8")
            if pretrained
            else contextlib.nullcontext()
        )
        with int8_serving as served8:
            if served8 is not None:
                urls8 = {"http_url": served8.http_url, "grpc_url": f"127.0.0.1:{served8.grpc_port}"}
                warm_up(urls8, images, work)
                on_int8 = {**urls8, "folder": images, "work": str(work)}
                paths["triton_int8"] = [
                    (triton_client, {**on_int8, "options": row["options"]}) for row in leaders(served)
                ]
            extra["round_candidates"] = {
                name: [_setting(arguments) for _, arguments in candidates]
                for name, candidates in paths.items()
            }
            extra["rounds"] = [
                {
                    name: max(in_clean_process(function, **args)["img_s"] for function, args in candidates)
                    for name, candidates in paths.items()
                }
                for _ in range(ROUNDS)
            ]
    return {
        "ceiling": ceiling,
        "triton": triton,
        "peer": peer,
        "end_to_end": end_to_end,
        "all": results,
        **extra,
    }


def _named(row: Row, *names: str) -> dict[str, Any]:
    return dict(zip(names, row["setting"], strict=True))


def _setting(arguments: dict[str, Any]) -> dict[str, Any]:
    """A round candidate's settings, without the paths and URLs it runs on."""
    shown = ("batch", "workers", "threads", "concurrency", "options")
    return {name: value for name, value in arguments.items() if name in shown}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--images", type=int, default=2000, help="for small (and xception)")
    parser.add_argument("--efficientnet-images", type=int, default=600)
    parser.add_argument("--rss-images", type=int, nargs=2, default=(2000, 20000))
    parser.add_argument("--models", default="efficientnet_lite0,small")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/inference-results.json"))
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        work = Path(tmp)
        wanted = args.models.split(",")
        for model in [choice for choice in get_args(ModelChoice) if choice in wanted]:
            count = args.efficientnet_images if is_pretrained(model) else args.images
            folder = link_images(args.source, work / f"images-{model}", count)
            print(f"{model}: {count} images", file=sys.stderr, flush=True)
            results[model] = benchmark_model(model, folder, work, model == "small")
            results[model]["images"] = len(_files(str(folder)))
        if "small" in results:
            with triton_serving(str(work / "small"), work, 2, 1) as state:
                results["rss_mib"] = {
                    str(n): client_peak_rss(state, link_images(args.source, work / f"rss-{n}", n), work)
                    for n in args.rss_images
                }
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print_tables(results)
    return 0


RATIOS = {
    "(2) / (1)": ("triton", "ceiling"),
    "(4) / (1)": ("end_to_end", "ceiling"),
    "(2) / (3)": ("triton", "peer"),
    "INT8 / FP32 (1)": ("ceiling_int8", "ceiling"),
    "(2) INT8 served / (1) FP32": ("triton_int8", "ceiling"),
    "(1) after a TF export / (1)": ("ceiling_after_tf", "ceiling"),
}


def print_rounds(rounds: list[dict[str, float]]) -> None:
    """The best settings side by side, round after round: each ratio within its own round."""
    paths = list(rounds[0])
    ratios = {name: pair for name, pair in RATIOS.items() if set(pair) <= set(paths)}
    print(f"\nhead to head, {len(rounds)} interleaved rounds of the best settings (img/s per round):\n")
    print("| round | " + " | ".join(paths) + " | " + " | ".join(ratios) + " |")
    print("|---" * (1 + len(paths) + len(ratios)) + "|")
    for number, figures in enumerate(rounds, 1):
        speeds = " | ".join(f"{figures[key]:.0f}" for key in paths)
        quotients = " | ".join(f"{figures[a] / figures[b]:.2f}" for a, b in ratios.values())
        print(f"| {number} | {speeds} | {quotients} |")
    medians = " | ".join(
        f"**{statistics.median(r[a] / r[b] for r in rounds):.2f}**" for a, b in ratios.values()
    )
    print(f"| median |{' |' * len(paths)} {medians} |")


def print_tables(results: dict[str, Any]) -> None:
    for model in get_args(ModelChoice):
        if model not in results:
            continue
        figures = results[model]
        ceiling = figures["ceiling"]["img_s"]
        print(f"\n{model}, {figures['images']} images\n")
        print("| path | best configuration | img/s | p50 ms | p99 ms | vs ceiling |")
        print("|---|---|---|---|---|---|")
        for key, name in (
            ("ceiling", "(1) in-process ONNX Runtime"),
            ("triton", "(2) our client -> Triton"),
            ("peer", "(3) FastAPI per-image peer"),
            ("end_to_end", "(4) bucket -> DAG batch stage"),
        ):
            row = figures[key]
            print(
                f"| {name} | {row['config']} | {row['img_s']:.0f} | {row['p50_ms']} | {row['p99_ms']} "
                f"| {row['img_s'] / ceiling:.2f} |"
            )
        split = figures["triton"]["server_split_ms"]
        print(
            f"\nTriton's split of a request at (2)'s best (ms): queue {split['queue']}, "
            f"input {split['compute_input']}, "
            f"inference {split['compute_infer']}, output {split['compute_output']}; "
            f"{figures['triton']['images_per_execution']} images per model execution; "
            f"client-side p50 {figures['triton']['p50_ms']} ms"
        )
        print_rounds(figures["rounds"])
        print("\nA path's figure in a round is the faster of its sweep's best settings:")
        for name, settings in figures["round_candidates"].items():
            print(f"- {name}: " + "; ".join(json.dumps(setting) for setting in settings))
        for row in figures.get("perf_analyzer", []):
            print(f"- {row['config']}: {row['img_s']:.0f} img/s, p99 {row['p99_ms']} ms")
        for key, rows in figures["all"].items():
            print(f"\n<details><summary>{key}: every configuration</summary>\n")
            for row in rows:
                latency = f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms"
                print(f"- {row['config']}: {row['img_s']:.0f} img/s ({latency})")
            print("\n</details>")
    if "rss_mib" in results:
        sizes = list(results["rss_mib"].items())
        print("\n| client peak RSS | MiB |\n|---|---|")
        for count, mib in sizes:
            print(f"| {count} images | {mib:.0f} |")
        print(f"\nratio {sizes[-1][0]} / {sizes[0][0]}: {sizes[-1][1] / sizes[0][1]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
