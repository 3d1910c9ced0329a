"""Runs under the real scheduler (pipeline/stack.py): triggered from the CLI, refused conf, killed workers.

`dag.test()` runs tasks in the test process with a logical date; the
scheduler gives manual runs `logical_date=None` and lets tasks reach the
metadata only through the execution API. This test catches what the first hides.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from core.settings import options_of
from harness.airflow import running_stack, stored_plan, wait_until_finished
from harness.data import manifest_files, relative_files, write_images
from pipeline.stack import AIRFLOW as AIRFLOW_BIN
from pipeline.stack import AirflowStack, wait_for

pytestmark = pytest.mark.integration
AIRFLOW = str(AIRFLOW_BIN)


def cli(stack: AirflowStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIRFLOW, *args], env=stack.env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[AirflowStack]:
    with running_stack(tmp_path) as stack:
        stack.wait_for_dag("dogs_cats")
        yield stack


# One bad value per kind of Param check: type (string, integer, number, boolean), bounds,
# enum, pattern, and the required param missing.
BAD_CONF: list[tuple[dict, str]] = [
    ({"data_bucket": 5}, "5 is not of type 'string'"),
    ({"source": "/s"}, "param data_bucket: No value passed"),
    ({"data_bucket": "/b", "epochs": "five"}, "'five' is not of type 'integer'"),
    ({"data_bucket": "/b", "epochs": -1}, "-1 is less than the minimum of 0"),
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
def test_cli_triggered_run_succeeds_and_bad_conf_is_refused(standalone: AirflowStack, tmp_path: Path) -> None:
    api = standalone.api()

    refused = cli(standalone, "dags", "trigger", "dogs_cats", "--conf", json.dumps({"data_bucket": 5}))
    assert refused.returncode != 0
    assert "5 is not of type 'string'" in refused.stdout + refused.stderr

    refused = cli(
        standalone,
        "dags",
        "trigger",
        "dogs_cats",
        "--conf",
        json.dumps({"data_bucket": "/b", "model": "resnet"}),
    )
    assert refused.returncode != 0
    refusal = (
        "'resnet' is not one of "
        "['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', 'small', 'xception']"
    )
    assert refusal in refused.stdout + refused.stderr

    for conf, message in BAD_CONF:
        status, body = api.request(
            "POST", "/api/v2/dags/dogs_cats/dagRuns", {"logical_date": None, "conf": conf}
        )
        assert status == 400, conf
        assert message in json.dumps(body), (conf, body)
    _, runs = api.request("GET", "/api/v2/dags/dogs_cats/dagRuns")
    assert runs["total_entries"] == 0, "refused conf creates no run, so no task ever starts"

    bucket = tmp_path / "bucket"
    conf = {
        "data_bucket": str(bucket),
        "source": str(write_images(tmp_path / "source", per_class=16, size=40)),
        "test_fraction": 0.25,  # a few test images of each class from 32
        "model": "small",
        "image_size": 32,
        "epochs": 1,
        "batch_size": 8,
        "max_batch_size": 8,
    }
    triggered = cli(standalone, "dags", "trigger", "dogs_cats", "--conf", json.dumps(conf))
    assert triggered.returncode == 0, triggered.stderr

    (listed,) = api.get("/api/v2/dags/dogs_cats/dagRuns")["dag_runs"]
    run = wait_until_finished(api, "dogs_cats", listed["dag_run_id"], 600)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances("dogs_cats", run["dag_run_id"])}
    assert run["state"] == "success", states
    assert run["logical_date"] is None
    # The run records its platform where the UI shows it: the plan task's XCom.
    plan = stored_plan(api, run["dag_run_id"])
    assert plan is not None
    assert plan.config.platform == "local"
    (report,) = (bucket / "predictions").glob("*/report.json")
    assert json.loads(report.read_text())["failed"] == 0


def _task_process(standalone: AirflowStack, run_id: str, task: str) -> psutil.Process:
    """The process Airflow runs the task's current try in (titled `airflow worker -- <ti id>`),
    found as soon as it starts, so the kill itself can land at the exact moment wanted."""
    api = standalone.api()
    ti_path = f"/api/v2/dags/dogs_cats/dagRuns/{run_id}/taskInstances/{task}"

    def running() -> psutil.Process | None:
        status, instance = api.request("GET", ti_path)
        if status != 200 or instance["state"] != "running":
            return None
        title = f"airflow worker -- {instance['id']}"
        found = [p for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]
        return found[0] if found else None

    found: psutil.Process = wait_for(f"{task} to start", running, 600, interval_s=0.05)
    return found


@pytest.mark.faults
def test_a_worker_killed_in_staging_and_in_batch_inference_retries_to_a_clean_result(
    standalone: AirflowStack, tmp_path: Path
) -> None:
    """Under the real scheduler: the task process of stage_data, then of classify_shard,
    is killed midway; each retry finishes, and the outputs equal a clean run's."""
    from client.batch import BatchOptions, run_batch
    from training.staging import StagingOptions, stage_dataset

    api = standalone.api()
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
    run_id = api.trigger("dogs_cats", conf)

    plan = wait_for("the plan", lambda: stored_plan(api, run_id), 180, interval_s=1)
    dataset = Path(plan.dataset_uri)
    staging = _task_process(standalone, run_id, "stage_data")
    wait_for(
        "staging to be midway", lambda: sum(1 for _ in dataset.rglob("*.jpg")) >= 50, 300, interval_s=0.01
    )
    staging.kill()  # as the OOM killer would: its supervisor reports the try as failed
    assert not (dataset / "manifest.json").exists(), "killed before staging finished"

    predictions = Path(plan.predictions_uri)
    first_part = predictions / "shards" / "shard-00000" / "parts" / "part-00000.json"
    inference = _task_process(standalone, run_id, "classify_shard/0")
    wait_for("inference to be midway", first_part.exists, 600, interval_s=0.01)
    inference.kill()
    assert not (predictions / "predictions.jsonl").exists(), "killed before inference finished"

    assert wait_until_finished(api, "dogs_cats", run_id, 600)["state"] == "success"
    for task in ("stage_data", "classify_shard/0"):
        _, instance = api.request("GET", f"/api/v2/dags/dogs_cats/dagRuns/{run_id}/taskInstances/{task}")
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
