"""Batch inference against the real local tritonserver (HTTP and gRPC, tensors
and encoded bytes), plus the parts that need no server."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from client import batch
from client.batch import (
    BatchOptions,
    InputChanged,
    LeftOut,
    RetryPolicy,
    TritonUnavailable,
    iter_images,
    retryable,
    run_batch,
    shard_images,
    shard_size,
    shards_left_out,
    write_shards,
)
from core.constants import SHARD_SLOTS
from core.images import decode_rgb
from core.processes import wait_for
from deploy.local_triton import SHM_FOLDER, SHM_REGION_PREFIX
from harness.data import IMAGE_KINDS, REPO_ROOT, write_image_kinds, write_images
from harness.http_server import gated_proxy
from harness.serving import free_port, serving_model_folder

QUICK = RetryPolicy(attempts=2, first_delay_s=0.001)


def test_retry_backs_off_then_succeeds() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("connection refused")
        return "answer"

    assert RetryPolicy(attempts=5, first_delay_s=0.001).call(flaky, "x") == "answer"
    assert len(calls) == 3


def test_retry_gives_up_with_a_clear_error() -> None:
    def down() -> None:
        raise InferenceServerException("Service Unavailable", status="503")

    with pytest.raises(
        TritonUnavailable, match=r"inference failed 3 times; last error: .*Service Unavailable"
    ):
        RetryPolicy(attempts=3, first_delay_s=0.001).call(down, "inference")


def test_client_errors_are_not_retried() -> None:
    calls: list[int] = []

    def bad_request() -> None:
        calls.append(1)
        raise InferenceServerException("unexpected shape", status="400")

    with pytest.raises(InferenceServerException, match="unexpected shape"):
        RetryPolicy(attempts=5, first_delay_s=0.001).call(bad_request, "inference")
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [("StatusCode.UNAVAILABLE", True), ("StatusCode.INVALID_ARGUMENT", False), ("503", True), ("400", False)],
)
def test_grpc_and_http_statuses_are_retried_alike(status: str, expected: bool) -> None:
    assert retryable(InferenceServerException("x", status=status)) is expected


def test_a_model_still_loading_is_retried_but_an_unknown_one_is_not() -> None:
    loading = "Request for unknown model: 'dogs_cats' has no available versions"
    assert retryable(InferenceServerException(loading, status="404"))
    unknown = "Request for unknown model: 'nope' is not found"
    assert not retryable(InferenceServerException(unknown, status="400"))


def test_listing_streams_images_in_a_stable_order(tmp_path: Path) -> None:
    images = write_images(tmp_path / "in", per_class=3)
    (images / "dog" / "notes.txt").write_text("not an image suffix")
    (images / "dog" / "README").write_text("no suffix")
    Image.new("RGB", (8, 8)).save(images / "cat" / "scan.tif")  # Pillow reads TIFF: classified
    left_out = LeftOut()
    stream = iter_images(str(images), left_out)
    assert not isinstance(stream, list), "a generator, not a list in memory"
    listed = list(stream)
    assert len(listed) == 7
    assert listed == list(iter_images(str(images), LeftOut()))
    assert left_out.to_dict() == {
        "files": 2,
        "by_reason": {
            "not an image type classified here (.txt)": {
                "files": 1,
                "example": str(images / "dog" / "notes.txt"),
            },
            "not an image type classified here (no suffix)": {
                "files": 1,
                "example": str(images / "dog" / "README"),
            },
        },
    }


def test_shards_cover_the_input_once_and_are_reused(tmp_path: Path) -> None:
    images = write_images(tmp_path / "in", per_class=5)
    (images / "README").write_text("no suffix")
    shards = write_shards(str(images), str(tmp_path / "shards"), images_per_shard=4)
    assert len(shards) == 3
    listed = [image for shard in shards for image in shard_images(shard)]
    assert sorted(listed) == sorted(iter_images(str(images), LeftOut()))
    assert write_shards(str(images), str(tmp_path / "shards"), images_per_shard=4) == shards
    assert shards_left_out(str(tmp_path / "shards"))["files"] == 1, "the merge's report names it"


@pytest.mark.parametrize(
    ("images", "size"),
    [(1, 1), (1999, 1999), (2000, 2000), (4000, 2000), (5000, 2500), (20_000, 5000), (1_000_001, 250_001)],
)
def test_shards_follow_the_input_size_up_to_the_tasks_that_run_at_once(images: int, size: int) -> None:
    assert shard_size(images) == size
    assert math.ceil(images / size) <= SHARD_SLOTS


def test_shards_sized_from_the_listing_cover_it_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_images(tmp_path / "in", per_class=5)
    assert len(write_shards(str(images), str(tmp_path / "one"))) == 1, "10 images: one task"
    monkeypatch.setattr(batch, "MIN_IMAGES_PER_SHARD", 3)
    shards = write_shards(str(images), str(tmp_path / "three"))
    assert [len(shard_images(shard)) for shard in shards] == [4, 4, 2]
    listed = [image for shard in shards for image in shard_images(shard)]
    assert listed == list(iter_images(str(images), LeftOut()))


def test_empty_input_is_a_clear_error_before_any_connection(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images found"):
        run_batch("127.0.0.1:1", str(tmp_path), str(tmp_path / "out"))


def _expected(model_uri: str, files: list[Path], image_size: int = 32) -> np.ndarray:
    session = ort.InferenceSession(f"{model_uri}/model.onnx", providers=["CPUExecutionProvider"])
    images = np.stack([decode_rgb(f.read_bytes(), image_size) for f in files])
    (probabilities,) = session.run(["probabilities"], {"image": images})
    return np.asarray(probabilities)


def _lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("protocol", "encoded"), [("http", False), ("grpc", False), ("http", True), ("grpc", True)]
)
def test_batch_matches_in_process_onnx_and_reports_every_bad_kind(
    served_model: dict, tmp_path: Path, protocol: str, encoded: bool
) -> None:
    images = write_images(tmp_path / "in", per_class=11, size=40, seed=7)  # 22 images: 3 batches of <= 8
    write_image_kinds(images / "odd")
    (images / "dog" / "notes.txt").write_text("ignored: not an image suffix")
    url = served_model["url"] if protocol == "http" else served_model["grpc_url"]
    options = BatchOptions(protocol=protocol, encoded=encoded, concurrency=3)  # type: ignore[arg-type]

    report = run_batch(url, str(images), str(tmp_path / "out"), options, class_names=["cat", "dog"])
    assert report["left_out"]["files"] == 1, "notes.txt, named with its reason"

    refused = {name: reason for name, reason in IMAGE_KINDS.items() if reason}
    assert report["images"] == 22 + len(IMAGE_KINDS)
    assert report["failed"] == len(refused)
    reasons = {Path(f["image"]).name: f["reason"] for f in report["failures"]}
    assert reasons.keys() == refused.keys()
    for name, reason in refused.items():
        assert reason in reasons[name], f"{name}: {reasons[name]}"
    lines = _lines(tmp_path / "out")
    assert len(lines) == report["succeeded"] == 22 + len(IMAGE_KINDS) - len(refused)
    assert len({line["image"] for line in lines}) == len(lines)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert report["accuracy_by_folder"] > 0
    assert report["request_latency_ms"]["requests"] >= 3
    assert report["request_latency_ms"]["p50"] <= report["request_latency_ms"]["p99"]

    # What Triton answered is what the served model file (FP32 or its INT8 twin, as packaging
    # chose) computes in-process, odd modes included.
    files = [Path(line["image"]) for line in lines]
    version = served_model["version"]
    expected = _expected(f"{version.repository_uri}/{version.model_name}/{version.version}", files)
    labels = ["cat", "dog"]
    for line, row in zip(lines, expected, strict=True):
        assert line["label"] == labels[int(row.argmax())]
        assert line["confidence"] == pytest.approx(float(row.max()), abs=1e-5)


@pytest.mark.integration
def test_predict_cli_prints_top_k(served_model: dict, tmp_path: Path) -> None:
    images = write_images(tmp_path / "in", per_class=1)
    (tmp_path / "bad.jpg").write_text("nope")
    for extra in ([], ["--encoded"], ["--protocol", "grpc", "--url", served_model["grpc_url"]]):
        result = subprocess.run(
            [sys.executable, "-m", "client", "--url", served_model["url"], *extra, "predict", "--top-k", "2",
             "--json", str(images / "cat" / "cat0.jpg"), str(tmp_path / "bad.jpg")],
            cwd=REPO_ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 1, "a failed image makes the exit code non-zero"
        good, bad = (json.loads(line) for line in result.stdout.splitlines())
        assert [p["label"] for p in good["predictions"]] in (["cat", "dog"], ["dog", "cat"])
        assert sum(p["confidence"] for p in good["predictions"]) == pytest.approx(1.0, abs=1e-4)
        assert "not an image Pillow can read" in bad["error"]


@pytest.mark.integration
def test_batch_cli_scores_class_folders_and_counts_what_it_leaves_out(
    served_model: dict, tmp_path: Path
) -> None:
    """Folders named after the model's labels are ground truth, as in the DAG; a TIFF is
    classified and a file of no image type is named in the report with its reason."""
    images = write_images(tmp_path / "in", per_class=4, size=40, seed=3)
    Image.open(images / "cat" / "cat0.jpg").save(images / "cat" / "scan.tif")
    (images / "dog" / "notes.txt").write_text("not an image")
    result = subprocess.run(
        [sys.executable, "-m", "client", "--url", served_model["url"], "batch", "--input", str(images),
         "--output", str(tmp_path / "out"), "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.splitlines()[-1])
    assert (printed["images"], printed["files_left_out"]) == (9, 1)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accuracy_by_folder"] == printed["accuracy_by_folder"]
    confusion = report["evaluation"]["confusion_matrix"]
    assert confusion["labels"] == ["cat", "dog"]
    assert sum(map(sum, confusion["rows_true_columns_predicted"])) == 9
    assert list(report["left_out"]["by_reason"]) == ["not an image type classified here (.txt)"]
    assert "files left out" in (tmp_path / "out" / "report.html").read_text()


def test_cli_says_clearly_when_no_server_answers(tmp_path: Path) -> None:
    image = write_images(tmp_path / "in", per_class=1) / "cat" / "cat0.jpg"
    result = subprocess.run(
        [sys.executable, "-m", "client", "--url", f"127.0.0.1:{free_port()}", "predict", str(image)],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot reach Triton" in result.stderr
    batch = subprocess.run(
        [sys.executable, "-m", "client", "--url", f"127.0.0.1:{free_port()}", "batch", "--input",
         str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--retries", "2", "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert batch.returncode == 2
    assert "is unavailable" in batch.stderr


@pytest.mark.faults
@pytest.mark.integration
def test_a_client_killed_mid_run_resumes_with_every_image_exactly_once(
    served_model: dict, tmp_path: Path
) -> None:
    # Behind a proxy that holds the 261st inference: the first part (256 images) is written, the
    # client can finish nothing more, and it is killed there, however fast the server answers.
    images = write_images(tmp_path / "in", per_class=150, size=40)
    output = tmp_path / "out"
    with gated_proxy(served_model["url"], pass_infers=260) as proxy:
        command = [sys.executable, "-m", "client", "--url", proxy.url, "batch", "--input", str(images),
                   "--output", str(output), "--concurrency", "1", "--batch-size", "1"]  # fmt: skip
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for("the client to reach the gate", proxy.holding.is_set, 300, interval_s=0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert (output / "parts" / "part-00000.json").exists()
    assert not (output / "parts" / "part-00001.json").exists()
    assert not (output / "predictions.jsonl").exists()

    command[command.index(proxy.url)] = served_model["url"]
    rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((output / "report.json").read_text())
    assert report["this_run"]["parts_resumed"] >= 1
    names = sorted(Path(line["image"]).name for line in _lines(output))
    assert names == sorted(p.name for p in images.rglob("*.jpg")), "none missing, none twice"
    run_batch(served_model["url"], str(images), str(tmp_path / "clean"))
    assert _lines(output) == _lines(tmp_path / "clean"), "the same predictions as a run never killed"


@pytest.mark.faults
@pytest.mark.integration
def test_a_server_that_stays_down_ends_the_run_clearly_and_keeps_finished_parts(
    trained_model: str, tmp_path: Path
) -> None:
    """A real tritonserver (and its python-backend stubs) killed mid-batch and never restarted."""
    images = write_images(tmp_path / "in", per_class=200, size=40)
    output = tmp_path / "out"
    with serving_model_folder(trained_model, tmp_path) as (server, _):
        state = server.state()
        assert state is not None

        def kill_once_parts_appear() -> None:
            wait_for("the third part", (output / "parts" / "part-00002.json").exists, 300, interval_s=0.01)
            machine = psutil.Process(state.pid)
            stubs = machine.children(recursive=True)
            regions = [stub.cmdline()[2] for stub in stubs]
            for process in [*stubs, machine]:
                process.kill()
            # Nothing is left to free the stubs' shared memory: this test does, not to leak it.
            for region in regions:
                (SHM_FOLDER / region).unlink(missing_ok=True)

        killer = threading.Thread(target=kill_once_parts_appear, daemon=True)
        killer.start()
        options = BatchOptions(concurrency=1, batch_size=2, retry=QUICK, part_size=8)
        expected = r"failed 2 times.*; (\d+) parts are saved under .*rerun"
        with pytest.raises(TritonUnavailable, match=expected) as raised:
            run_batch(state.http_url, str(images), str(output), options)
        killer.join(timeout=60)
    saved = int(re.search(r"; (\d+) parts are saved", str(raised.value)).group(1))  # type: ignore[union-attr]
    assert saved >= 3
    assert len(list((output / "parts").iterdir())) == saved, "every finished part kept, nothing partial"
    assert not (output / "predictions.jsonl").exists()


def test_a_server_that_never_answers_ends_the_run_clearly(tmp_path: Path) -> None:
    images = write_images(tmp_path / "in", per_class=1)
    with pytest.raises(TritonUnavailable, match="failed 2 times"):
        run_batch(f"127.0.0.1:{free_port()}", str(images), str(tmp_path / "out"), BatchOptions(retry=QUICK))


@pytest.mark.integration
def test_a_changed_input_is_refused_instead_of_mixed_in(served_model: dict, tmp_path: Path) -> None:
    images = write_images(tmp_path / "in", per_class=6, size=40)
    options = BatchOptions(part_size=4)
    run_batch(served_model["url"], str(images), str(tmp_path / "out"), options)
    (images / "cat" / "cat0.jpg").unlink()
    with pytest.raises(InputChanged, match="the input changed"):
        run_batch(served_model["url"], str(images), str(tmp_path / "out"), options)
    with pytest.raises(InputChanged, match="in parts of 4"):
        run_batch(served_model["url"], str(images), str(tmp_path / "out"), BatchOptions(part_size=8))


@pytest.mark.faults
@pytest.mark.integration
def test_retries_ride_out_a_server_restart(trained_model: str, tmp_path: Path) -> None:
    """The real tritonserver is killed mid-batch and restarted: the batch completes, same answers."""
    from deploy.local_triton import LocalTriton
    from model_repository.repository import package_model

    repository = tmp_path / "repo"
    package_model(trained_model, str(repository), flavour="python", model_name="dogs_cats", max_batch_size=8)
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    server = LocalTriton(tmp_path / "state", **ports)
    state = server.ensure_running(repository, timeout_s=60)
    server.load(state, "dogs_cats", timeout_s=120)
    images = write_images(tmp_path / "in", per_class=200, size=40)
    # ~90 s of retries, one a second: room for a restart on a loaded CI machine.
    patient = BatchOptions(
        concurrency=2, batch_size=2, part_size=8, retry=RetryPolicy(attempts=90, max_delay_s=1.0)
    )
    outage: dict[str, float] = {}
    regions: list[str] = []  # the stubs' shared-memory regions, named in their command lines

    def restart_once_parts_appear() -> None:
        third = tmp_path / "restarted" / "parts" / "part-00002.json"
        wait_for("the third part", third.exists, 300, interval_s=0.01)
        regions.extend(p.cmdline()[2] for p in psutil.Process(state.pid).children())
        outage["down"] = time.time()
        os.kill(state.pid, signal.SIGKILL)  # no graceful drain: requests fail until it is back
        restarted = server.ensure_running(repository, timeout_s=60)
        server.load(restarted, "dogs_cats", timeout_s=120)
        outage["up"] = time.time()

    restarter = threading.Thread(target=restart_once_parts_appear, daemon=True)
    try:
        clean = run_batch(state.http_url, str(images), str(tmp_path / "clean"), patient)
        restarter.start()
        report = run_batch(state.http_url, str(images), str(tmp_path / "restarted"), patient)
    finally:
        if restarter.is_alive():
            restarter.join(timeout=120)
        server.stop()
    stubs = [
        p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert stubs == [], "the killed server's python-backend stubs were stopped on restart"
    assert regions
    assert all(name.startswith(SHM_REGION_PREFIX) for name in regions)
    assert [name for name in regions if (SHM_FOLDER / name).exists()] == [], "and their memory freed"
    assert report["failed"] == 0
    parts = [json.loads(p.read_text()) for p in sorted((tmp_path / "restarted" / "parts").iterdir())]
    assert min(part["finished"] for part in parts) < outage["down"], "parts finished before the outage"
    assert max(part["finished"] for part in parts) > outage["up"], "and after the server came back"
    assert _lines(tmp_path / "restarted") == _lines(tmp_path / "clean")
    assert clean["succeeded"] == report["succeeded"] == 400
