"""One run under the real scheduler (`airflow standalone`), triggered from the CLI.

`dag.test()` runs tasks in the test process with a logical date; the
scheduler gives manual runs `logical_date=None` and lets tasks reach the
metadata only through the execution API. This test catches what the first hides.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from core.settings import options_of
from deploy.local_triton import LocalTriton
from harness.data import REPO_ROOT, manifest_files, relative_files, write_images
from harness.serving import free_port
from pipeline.plan import RunPlan

pytestmark = pytest.mark.integration
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


class Standalone:
    def __init__(self, home: Path, env: dict[str, str], port: int) -> None:
        self.home, self.env, self.base = home, env, f"http://127.0.0.1:{port}"
        self._token = ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=120)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        if not self._token and path != "/auth/token":
            passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
            _, token = self.request(
                "POST", "/auth/token", {"username": "admin", "password": passwords["admin"]}
            )
            self._token = token["access_token"]
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


def _wait(what: str, check: Any, timeout_s: float, interval_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, urllib.error.URLError, FileNotFoundError):
            result = None
        if result:
            return result
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    home = tmp_path / "airflow"
    port = free_port()
    triton = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    env = {
        **os.environ,
        # standalone starts its components as `airflow ...` subprocesses found on PATH.
        "PATH": f"{Path(AIRFLOW).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",  # 2 cores: fewer worker processes, less memory
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "DOGS_CATS_STATE_DIR": str(tmp_path / "state"),
        **{f"DOGS_CATS_TRITON_{name.upper()}": str(value) for name, value in triton.items()},
    }
    log = (tmp_path / "standalone.log").open("wb")
    process = subprocess.Popen(
        [AIRFLOW, "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Standalone(home, env, port)
    try:
        _wait("the API server", lambda: server.request("GET", "/api/v2/monitor/health")[0] == 200, 180)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGINT)  # SIGTERM would orphan the LocalExecutor workers
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        LocalTriton(tmp_path / "state", **triton).stop()


# One bad value per kind of Param check: type (string, integer, number, boolean), bounds,
# enum, pattern, and the required param missing.
BAD_CONF: list[tuple[dict, str]] = [
    ({"data_bucket": 5}, "5 is not of type 'string'"),
    ({"source": "/s"}, "param data_bucket: No value passed"),
    ({"data_bucket": "/b", "epochs": "five"}, "'five' is not of type 'integer'"),
    ({"data_bucket": "/b", "epochs": 0}, "0 is less than the minimum of 1"),
    ({"data_bucket": "/b", "image_size": 4096}, "4096 is greater than the maximum of 512"),
    ({"data_bucket": "/b", "learning_rate": "fast"}, "'fast' is not of type 'number'"),
    ({"data_bucket": "/b", "val_fraction": 1.5}, "1.5 is greater than or equal to the maximum of 1"),
    ({"data_bucket": "/b", "require_jfif": "yes"}, "'yes' is not of type 'boolean'"),
    ({"data_bucket": "/b", "platform": "kubernetes"}, "'kubernetes' is not one of ['local']"),
    ({"data_bucket": "/b", "inference_protocol": "ftp"}, "'ftp' is not one of ['http', 'grpc']"),
    ({"data_bucket": "/b", "dataset_name": "Bad Name"}, "does not match"),
    ({"data_bucket": "/b", "source_sha256": "abc"}, "does not match"),
]


@pytest.mark.faults
def test_cli_triggered_run_succeeds_and_bad_conf_is_refused(standalone: Standalone, tmp_path: Path) -> None:
    _wait("the DAG to be parsed", lambda: standalone.request("GET", "/api/v2/dags/dogs_cats")[0] == 200, 180)

    refused = standalone.cli("dags", "trigger", "dogs_cats", "--conf", json.dumps({"data_bucket": 5}))
    assert refused.returncode != 0
    assert "5 is not of type 'string'" in refused.stdout + refused.stderr

    refused = standalone.cli(
        "dags", "trigger", "dogs_cats", "--conf", json.dumps({"data_bucket": "/b", "model": "resnet"})
    )
    assert refused.returncode != 0
    refusal = "'resnet' is not one of ['efficientnet_lite0', 'small', 'xception']"
    assert refusal in refused.stdout + refused.stderr

    for conf, message in BAD_CONF:
        status, body = standalone.request(
            "POST", "/api/v2/dags/dogs_cats/dagRuns", {"logical_date": None, "conf": conf}
        )
        assert status == 400, conf
        assert message in json.dumps(body), (conf, body)
    _, runs = standalone.request("GET", "/api/v2/dags/dogs_cats/dagRuns")
    assert runs["total_entries"] == 0, "refused conf creates no run, so no task ever starts"

    bucket = tmp_path / "bucket"
    conf = {
        "data_bucket": str(bucket),
        "source": str(write_images(tmp_path / "source", per_class=16, size=40)),
        "model": "small",
        "image_size": 32,
        "epochs": 1,
        "batch_size": 8,
        "max_batch_size": 8,
    }
    triggered = standalone.cli("dags", "trigger", "dogs_cats", "--conf", json.dumps(conf))
    assert triggered.returncode == 0, triggered.stderr

    def finished() -> dict | None:
        _, runs = standalone.request("GET", "/api/v2/dags/dogs_cats/dagRuns")
        done = [r for r in runs["dag_runs"] if r["state"] in ("success", "failed")]
        return done[0] if done else None

    run = _wait("the run to finish", finished, 600, interval_s=5)
    _, instances = standalone.request(
        "GET", f"/api/v2/dags/dogs_cats/dagRuns/{run['dag_run_id']}/taskInstances"
    )
    states = {ti["task_id"]: ti["state"] for ti in instances["task_instances"]}
    assert run["state"] == "success", states
    assert run["logical_date"] is None
    # The run records its platform where the UI shows it: the plan task's XCom.
    plan = _plan(standalone, run["dag_run_id"])
    assert plan is not None
    assert plan.config.platform == "local"
    (report,) = (bucket / "predictions").glob("*/report.json")
    assert json.loads(report.read_text())["failed"] == 0


def _task_process(standalone: Standalone, run_id: str, task: str) -> psutil.Process:
    """The process Airflow runs the task's current try in (titled `airflow worker -- <ti id>`),
    found as soon as it starts, so the kill itself can land at the exact moment wanted."""
    ti_path = f"/api/v2/dags/dogs_cats/dagRuns/{run_id}/taskInstances/{task}"

    def running() -> psutil.Process | None:
        status, instance = standalone.request("GET", ti_path)
        if status != 200 or instance["state"] != "running":
            return None
        title = f"airflow worker -- {instance['id']}"
        found = [p for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]
        return found[0] if found else None

    found: psutil.Process = _wait(f"{task} to start", running, 600, interval_s=0.05)
    return found


def _plan(standalone: Standalone, run_id: str) -> RunPlan | None:
    """The run's plan as the plan task stored it, or None while the plan has not run."""
    path = f"/api/v2/dags/dogs_cats/dagRuns/{run_id}/taskInstances/plan/xcomEntries/return_value"
    status, entry = standalone.request("GET", path)
    if status != 200:
        return None
    stored = json.loads(entry["value"]) if isinstance(entry["value"], str) else entry["value"]
    assert stored["__classname__"] == "pipeline.plan.RunPlan", stored
    return RunPlan.model_validate(stored["__data__"])


@pytest.mark.faults
def test_a_worker_killed_in_staging_and_in_batch_inference_retries_to_a_clean_result(
    standalone: Standalone, tmp_path: Path
) -> None:
    """Under the real scheduler: the task process of stage_data, then of classify_shard,
    is killed midway; each retry finishes, and the outputs equal a clean run's."""
    from client.batch import BatchOptions, run_batch
    from training.staging import StagingOptions, stage_dataset

    _wait("the DAG to be parsed", lambda: standalone.request("GET", "/api/v2/dags/dogs_cats")[0] == 200, 180)
    source = write_images(tmp_path / "source", per_class=300, size=128)
    inference_input = write_images(tmp_path / "to-classify", per_class=2000, size=64)
    conf = {
        "data_bucket": str(tmp_path / "bucket"),
        "source": str(source),
        "model": "small",
        "image_size": 32,
        "epochs": 1,
        "batch_size": 32,
        "max_batch_size": 8,
        "inference_input": str(inference_input),
        "images_per_shard": 4000,  # one shard: one task to kill
    }
    status, run = standalone.request(
        "POST", "/api/v2/dags/dogs_cats/dagRuns", {"logical_date": None, "conf": conf}
    )
    assert status == 200, run
    run_id = run["dag_run_id"]

    plan = _wait("the plan", lambda: _plan(standalone, run_id), 180, interval_s=1)
    dataset = Path(plan.dataset_uri)
    staging = _task_process(standalone, run_id, "stage_data")
    _wait("staging to be midway", lambda: sum(1 for _ in dataset.rglob("*.jpg")) >= 50, 300, interval_s=0.01)
    staging.kill()  # as the OOM killer would: its supervisor reports the try as failed
    assert not (dataset / "manifest.json").exists(), "killed before staging finished"

    predictions = Path(plan.predictions_uri)
    first_part = predictions / "shards" / "shard-00000" / "parts" / "part-00000.json"
    inference = _task_process(standalone, run_id, "classify_shard/0")
    _wait("inference to be midway", first_part.exists, 600, interval_s=0.01)
    inference.kill()
    assert not (predictions / "predictions.jsonl").exists(), "killed before inference finished"

    def finished() -> dict | None:
        _, found = standalone.request("GET", f"/api/v2/dags/dogs_cats/dagRuns/{run_id}")
        return found if found["state"] in ("success", "failed") else None

    assert _wait("the run to finish", finished, 600, interval_s=5)["state"] == "success"
    for task in ("stage_data", "classify_shard/0"):
        _, instance = standalone.request(
            "GET", f"/api/v2/dags/dogs_cats/dagRuns/{run_id}/taskInstances/{task}"
        )
        assert instance["try_number"] == 2, (task, instance["state"])

    # The same staging done cleanly, in this process: same files, nothing left over.
    clean = tmp_path / "clean-dataset"
    options = options_of(StagingOptions, plan.config)
    stage_dataset(str(source), str(clean), options, cache_dir=tmp_path / "cache")
    assert manifest_files(dataset) == manifest_files(clean)
    assert relative_files(dataset) == relative_files(clean)
    # The same batch done cleanly against the model the run deployed.
    http_port = standalone.env["DOGS_CATS_TRITON_HTTP_PORT"]
    report = run_batch(
        f"127.0.0.1:{http_port}", str(inference_input), str(tmp_path / "clean"), BatchOptions()
    )
    assert report["succeeded"] == 4000
    assert _lines(predictions) == _lines(tmp_path / "clean")


def _lines(output: Path) -> list[str]:
    return sorted((output / "predictions.jsonl").read_text().splitlines())
