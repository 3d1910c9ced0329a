"""The live stack as users run it: Airflow's four components, a run triggered through REST,
the assets it emits, dogs_cats_batch following the deployment, and the UI in
headless Chromium (Playwright driving Debian's chromium; screenshots under
test-artifacts/ui/)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.processes import group_members
from core.settings import param_specs
from harness.airflow import running_stack, stored_plan, wait_until_finished
from harness.data import REPO_ROOT, write_images
from harness.sockets import listening_addresses
from pipeline.stack import JWT_SECRET_FILE, AirflowStack, progress_lines, wait_for

pytestmark = pytest.mark.integration
MAIN, BATCH = "dogs_cats", "dogs_cats_batch"
ARTIFACTS = Path(os.environ.get("DOGS_CATS_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "ui"
ASSETS = {
    "dogs_cats.dataset": "stage_data",
    "dogs_cats.model": "train",
    "dogs_cats.repository_version": "package",
    "dogs_cats.served_model": "deploy",
    "dogs_cats.predictions": "merge_predictions",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[AirflowStack]:
    standing = write_images(workdir / "standing", per_class=6, size=40)
    settings = {"DOGS_CATS_BATCH_INPUT": str(standing), "DOGS_CATS_BATCH_OUTPUT": str(workdir / "batch")}
    with running_stack(workdir, settings, prometheus=True) as stack:
        stack.wait_for_dag(MAIN)
        stack.wait_for_dag(BATCH)
        yield stack


@pytest.fixture(scope="module")
def finished_run(stack: AirflowStack, workdir: Path) -> dict[str, Any]:
    """One small run of dogs_cats, triggered through the REST API as `make demo` does."""
    conf = {
        "data_bucket": str(workdir / "bucket"),
        "source": str(write_images(workdir / "source", per_class=16, size=40)),
        "test_fraction": 0.25,  # a few test images of each class from 32
        "model": "small",
        "image_size": 32,
        "epochs": 1,
        "batch_size": 8,
        "max_batch_size": 8,
    }
    api = stack.api()
    run_id = api.trigger(MAIN, conf)
    return wait_until_finished(api, MAIN, run_id, 600)


def test_a_rest_triggered_run_succeeds_under_the_scheduler(stack: AirflowStack, finished_run: dict) -> None:
    api, run_id = stack.api(), finished_run["dag_run_id"]
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(MAIN, run_id)}
    assert finished_run["state"] == "success", states
    assert set(states.values()) == {"success"}
    assert finished_run["logical_date"] is None
    plan = stored_plan(api, run_id)
    assert plan is not None
    assert plan.config.platform == "local"
    report = json.loads(Path(plan.predictions_uri, "report.json").read_text())
    assert report["failed"] == 0
    # The merge task found the Prometheus `make up` runs through the platform, and asked it.
    serving = report["serving"]
    assert serving["prometheus"].startswith("http://127.0.0.1:"), serving
    served = serving["by_version_and_track"]["1/stable"]
    # The deploy's smoke test and the batch stage's requests, however close to the merge.
    assert served["requests"] >= 2, serving
    assert served["failures"] == 0


def test_the_progress_view_shows_each_task_once_finished(stack: AirflowStack, finished_run: dict) -> None:
    run_id = finished_run["dag_run_id"]
    lines = list(progress_lines(stack.api(), MAIN, run_id, poll_s=0))
    assert lines[-1] == f"run {run_id}: success"
    shown = {line.split()[1]: line.split()[2] for line in lines[:-1]}
    expected = {ti["task_id"] for ti in stack.api().task_instances(MAIN, run_id)} - {"classify_shard"}
    assert shown == {task: "success" for task in expected | {"classify_shard[0]"}}


def test_each_stage_emits_its_asset_with_what_it_wrote(stack: AirflowStack, finished_run: dict) -> None:
    run_id = urllib.parse.quote(finished_run["dag_run_id"])
    events = stack.api().get(f"/api/v2/assets/events?source_run_id={run_id}&limit=100")
    emitted = {event["name"]: event for event in events["asset_events"] if event["source_dag_id"] == MAIN}
    assert {name: event["source_task_id"] for name, event in emitted.items()} == ASSETS
    assert Path(emitted["dogs_cats.dataset"]["extra"]["manifest"]).is_file()
    assert Path(emitted["dogs_cats.model"]["extra"]["model"], "model.onnx").is_file()
    assert emitted["dogs_cats.served_model"]["extra"]["version"] == 1
    assert Path(emitted["dogs_cats.predictions"]["extra"]["report.json"]).is_file()


def test_the_batch_dag_reclassifies_the_standing_input_after_a_deployment(
    stack: AirflowStack, finished_run: dict, workdir: Path
) -> None:
    api = stack.api()

    def asset_triggered() -> dict | None:
        runs = api.get(f"/api/v2/dags/{BATCH}/dagRuns")["dag_runs"]
        done = [run for run in runs if run["run_type"] == "asset_triggered" and run["state"] != "running"]
        return done[0] if done else None

    run = wait_for("dogs_cats_batch to run on the served-model asset", asset_triggered, 300)
    assert run["state"] == "success"
    (report_file,) = (workdir / "batch").glob("*/report.json")
    report = json.loads(report_file.read_text())
    assert report["images"] == report["succeeded"] == 12
    # The model's labels came from Triton: the standing input's class folders are ground truth.
    assert "accuracy_by_folder" in report


def test_the_batch_dag_classifies_any_input_by_hand_and_refuses_bad_conf(
    stack: AirflowStack, finished_run: dict, workdir: Path
) -> None:
    api = stack.api()
    status, refused = api.request(
        "POST", f"/api/v2/dags/{BATCH}/dagRuns", {"logical_date": None, "conf": {"inference_protocol": "ftp"}}
    )
    assert status == 400
    assert "'ftp' is not one of ['http', 'grpc']" in json.dumps(refused)
    images = write_images(workdir / "by-hand", per_class=3, size=40)
    conf = {"input": str(images), "output": str(workdir / "by-hand-out"), "inference_protocol": "grpc"}
    run = wait_until_finished(api, BATCH, api.trigger(BATCH, conf), 300)
    assert run["state"] == "success"
    (predictions,) = (workdir / "by-hand-out").glob("*/predictions.jsonl")
    assert len(predictions.read_text().splitlines()) == 6


# The UI, as a user sees it.


@pytest.fixture(scope="module")
def page(stack: AirflowStack) -> Iterator[Any]:
    """A logged-in page of Debian's Chromium, driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(stack.base_url)
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(stack.password())
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(stack.base_url + "/")
            yield page
        finally:
            browser.close()


def test_the_run_page_shows_the_run_succeeded_with_every_task_green(
    page: Any, stack: AirflowStack, finished_run: dict
) -> None:
    run_id = finished_run["dag_run_id"]
    page.goto(stack.run_url(MAIN, run_id))
    page.get_by_text(run_id).first.wait_for()
    tasks = {ti["task_id"] for ti in stack.api().task_instances(MAIN, run_id)}
    rows = page.locator("tbody tr")
    rows.first.wait_for()
    page.screenshot(path=ARTIFACTS / "run.png")
    seen = {}
    for row in rows.all():
        cells = row.locator("td").all_inner_texts()
        seen[cells[1].strip()] = cells[3].strip()
    assert seen == {task: "Success" for task in tasks}
    # The run's own badge, and the grid's one green square per task and run.
    assert page.get_by_text("Success").first.is_visible()


def test_the_trigger_form_documents_every_param_and_refuses_a_bad_value(
    page: Any, stack: AirflowStack, finished_run: dict
) -> None:
    page.goto(f"{stack.base_url}/dags/{MAIN}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    submit = dialog.get_by_test_id("trigger-dag-submit")
    dialog.locator("[name=element_data_bucket]").wait_for()
    text = dialog.inner_text()
    for name, spec in param_specs().items():
        assert spec["title"] in text, name
        assert spec["description"].split(" Set for")[0] in text, name

    dialog.locator("[name=element_data_bucket]").fill(
        str(Path(finished_run["conf"]["data_bucket"]).parent / "ui")
    )
    page.wait_for_timeout(500)
    page.screenshot(path=ARTIFACTS / "trigger-form.png")
    assert submit.is_enabled(), "a filled-in data_bucket is all a run needs; optional fields stay empty"

    # Number fields clamp to their bounds as you type; a pattern is checked by the API server,
    # whose refusal the form shows. Either way no run is created.
    dialog.locator("[name=element_dataset_name]").fill("Bad Name")
    submit.click()
    refusal = dialog.get_by_text("Invalid input for param dataset_name: 'Bad Name' does not match")
    refusal.wait_for()
    refusal.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "trigger-refused.png")
    assert dialog.get_by_text("400 Bad Request").is_visible()
    assert stack.api().get(f"/api/v2/dags/{MAIN}/dagRuns")["total_entries"] == 1, "nothing was triggered"


@pytest.mark.security
def test_every_listener_of_the_stack_is_on_loopback_and_its_signing_key_is_long(
    stack: AirflowStack, finished_run: dict[str, Any]
) -> None:
    """After a whole run (LocalExecutor workers, a deferred task's triggerer): every socket any
    process of the stack's groups listens on is loopback's; the JWT key is 64 random bytes."""
    groups = stack.running()
    assert set(groups) == {"api-server", "scheduler", "dag-processor", "triggerer"}
    members = {pid for group in groups.values() for pid in group_members(group)}
    listening = listening_addresses(members)
    assert "127.0.0.1" in listening, "the api-server"
    assert listening <= {"127.0.0.1", "::1"}, listening
    key_file = stack.home / JWT_SECRET_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.urlsafe_b64decode(key_file.read_text() + "==")) >= 64
    assert "InsecureKeyLengthWarning" not in stack.log_file.read_text()
