"""Faults injected into the real local stack: every run ends with a clear message
and nothing lost or duplicated. `pytest -m faults` runs this suite (and the fault
tests that live beside the code they exercise: a killed training, a killed
client, a killed tritonserver, a model that fails to load)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from client.batch import BatchOptions, run_batch
from client.triton import Triton, classify_encoded
from core import storage
from core.images import ImageDecodeError, decode_rgb
from core.processes import wait_for
from harness.data import REPO_ROOT, manifest_files, relative_files, write_image_kinds, write_images
from harness.gcs import emulated_gcs_server
from harness.serving import free_port

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FUZZ_EXAMPLES = {"client": 400, "server": 150}
SLOW_OK = [HealthCheck.too_slow]


def test_staging_killed_midway_then_retried_matches_a_clean_run(tmp_path: Path) -> None:
    """What a worker killed during stage_data leaves behind, and what its retry makes of it."""
    source = write_images(tmp_path / "source", per_class=300, size=64)
    command = [sys.executable, "-m", "training", "stage", "--source", str(source)]
    env = {**os.environ, "DOGS_CATS_CACHE_DIR": str(tmp_path / "cache")}
    clean = tmp_path / "clean"
    subprocess.run([*command, "--dataset-uri", str(clean)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    first = subprocess.Popen([*command, "--dataset-uri", str(killed)], env=env, cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for("50 staged files", lambda: sum(1 for _ in killed.rglob("*.jpg")) >= 50, 120, interval_s=0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not (killed / "manifest.json").exists(), "killed before it finished"

    retry = subprocess.run([*command, "--dataset-uri", str(killed)], env=env, capture_output=True, text=True)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert manifest_files(killed) == manifest_files(clean)
    # A write cut by SIGKILL leaves at most a hidden temp file, which nothing lists.
    assert relative_files(killed) == relative_files(clean), "no leftover or missing file after the retry"


def test_batch_into_gcs_rides_out_a_storage_outage(served_model: dict, tmp_path: Path) -> None:
    """The bucket (fake-gcs-server on disk) goes away mid-batch and comes back: writes are
    retried, every part is whole, and the predictions equal a clean local run's."""
    images = write_images(tmp_path / "in", per_class=60, size=40)
    options = BatchOptions(part_size=8, concurrency=2, batch_size=4)
    clean = run_batch(served_model["url"], str(images), str(tmp_path / "clean"), options)
    outage: dict[str, float] = {}

    with emulated_gcs_server("faults", free_port(), tmp_path / "gcs") as (bucket, server):
        output = f"{bucket}/predictions"

        def outage_once_parts_appear() -> None:
            third = f"{output}/parts/part-00002.json"
            wait_for("the third part", lambda: storage.exists(third), 300, interval_s=0.02)
            server.stop()
            outage["down"] = time.time()
            time.sleep(3)  # the outage itself: the bucket stays away this long
            server.start()
            outage["up"] = time.time()

        breaker = threading.Thread(target=outage_once_parts_appear, daemon=True)
        breaker.start()
        report = run_batch(served_model["url"], str(images), output, options)
        breaker.join(timeout=60)
        objects = storage.list_files(bucket)
        parts = [json.loads(storage.read_text(uri)) for uri in objects if "/parts/" in uri]
        predictions = storage.read_text(f"{output}/predictions.jsonl").splitlines()

    assert "up" in outage, "the outage happened during the batch"
    assert max(part["finished"] for part in parts) > outage["up"]
    assert report["succeeded"] == clean["succeeded"] == 120
    assert len(parts) == 15, "every part whole, none twice"
    assert predictions == (tmp_path / "clean" / "predictions.jsonl").read_text().splitlines()


def test_hostile_bytes_never_crash_the_client_decoder(tmp_path: Path) -> None:
    """Generated and mutated bytes: decode_rgb returns an RGB array or raises ImageDecodeError."""
    seeds = [p.read_bytes() for p in sorted(write_image_kinds(tmp_path / "kinds").iterdir())]
    tried = {"n": 0}
    reasons: list[str] = []

    @settings(
        max_examples=FUZZ_EXAMPLES["client"], deadline=5000, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(data=_hostile_bytes(seeds))
    def decode(data: bytes) -> None:
        tried["n"] += 1
        try:
            image = decode_rgb(data, 32)
        except ImageDecodeError as exc:
            reasons.append(str(exc))
            return
        assert image.shape == (32, 32, 3)
        assert image.dtype == np.uint8

    decode()
    assert tried["n"] >= FUZZ_EXAMPLES["client"]
    assert reasons, "some inputs were refused"
    assert all(reasons), "every refusal says why"


def test_hostile_bytes_never_crash_the_server_ensemble(served_model: dict, tmp_path: Path) -> None:
    """The same bytes to dogs_cats_jpeg: an answer or a 400 naming the reason; the server stays up."""
    seeds = [p.read_bytes() for p in sorted(write_image_kinds(tmp_path / "kinds").iterdir())]
    triton = Triton(served_model["url"], timeout_s=30)
    outcomes = {"answered": 0}
    refusals: list[tuple[str, str]] = []

    @settings(
        max_examples=FUZZ_EXAMPLES["server"], deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(data=_hostile_bytes(seeds))
    def send(data: bytes) -> None:
        try:
            (top,) = classify_encoded(triton, "dogs_cats", [data])
        except InferenceServerException as exc:
            refusals.append((str(exc.status()), str(exc)))
            return
        assert top[0].label in {"cat", "dog"}
        outcomes["answered"] += 1

    send()
    assert triton.has_model("dogs_cats_jpeg")
    assert refusals, "some inputs were refused"
    assert {status for status, _ in refusals} == {"400"}, "refused as bad input, never a server error"
    assert all("image 0:" in message for _, message in refusals), "each refusal names the image and why"
    assert outcomes["answered"] + len(refusals) >= FUZZ_EXAMPLES["server"]


def _hostile_bytes(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, and real image files with bytes flipped, cut short or spliced together."""

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(data)))
        return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)

    return st.one_of(st.binary(max_size=2048), mutated())
