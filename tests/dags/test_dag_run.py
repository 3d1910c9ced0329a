"""One whole dogs_cats run with `dag.test()`: generated images, real training, real Triton."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from airflow.models.dagrun import DagRun

from core.images import decode_rgb
from core.settings import safe_name
from deploy.local_triton import LocalTriton
from harness.data import REPO_ROOT, write_images
from harness.serving import free_port
from training.staging import split_files

pytestmark = pytest.mark.integration


@pytest.fixture
def local_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalTriton]:
    """Deployment settings for the DAG, and the server it starts stopped afterwards."""
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    monkeypatch.setenv("DOGS_CATS_STATE_DIR", str(tmp_path / "state"))
    for name, port in ports.items():
        monkeypatch.setenv(f"DOGS_CATS_TRITON_{name.upper()}", str(port))
    subprocess.run(
        [Path(sys.executable).with_name("airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        cwd=REPO_ROOT,
    )
    server = LocalTriton(tmp_path / "state", **ports)
    yield server
    server.stop()


def _run_dag(tmp_path: Path, **conf: object) -> DagRun:
    from airflow.dag_processing.dagbag import DagBag

    source = write_images(tmp_path / "source", per_class=20, size=40, seed=3)
    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["dogs_cats"]
    small = {
        "model": "small", "image_size": 32, "epochs": 2, "batch_size": 8, "max_batch_size": 8,
        "test_fraction": 0.25,  # every class in the test split of 40 images
    }  # fmt: skip
    return dag.test(
        run_conf={"data_bucket": str(tmp_path / "bucket"), "source": str(source), **small, **conf}
    )


def test_dag_runs_end_to_end_on_real_triton(local_deployment: LocalTriton, tmp_path: Path) -> None:
    run = _run_dag(tmp_path, images_per_shard=4)
    assert run.state == "success"
    bucket = tmp_path / "bucket"

    manifest = json.loads((bucket / "datasets" / "cats_vs_dogs" / "manifest.json").read_text())
    test = split_files(manifest, "test")
    (predictions_dir,) = (bucket / "predictions").iterdir()
    report = json.loads((predictions_dir / "report.json").read_text())
    assert report["images"] == report["succeeded"] == len(test), "the batch stage classifies the test split"
    assert report["failed"] == 0
    assert (predictions_dir / "report.html").is_file()
    assert report["champion"]["why"] == "first deployment: no model is served"

    # Served through Triton, the test split scores what training scored it once, at the served precision.
    (model_dir,) = (bucket / "models").iterdir()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    served = bucket / "model_repository" / "local" / "dogs_cats" / "1"
    int8 = (served / "source.txt").read_text().endswith("(int8)")
    assert int8 == metrics["int8"]["serve"], "serving_precision auto follows the INT8 verdict"
    scored = metrics["int8"]["test"] if int8 else metrics["test"]
    for figure in ("examples", "accuracy", "accuracy_95ci", "roc_auc", "confusion_matrix"):
        assert report["evaluation"][figure] == scored[figure], figure
    assert report["evaluation"]["log_loss"] == pytest.approx(scored["log_loss"], abs=2e-4)

    # One mapped classify_shard per shard of 4 images, merged into one report.
    shards = -(-len(test) // 4)
    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "classify_shard"]
    assert sorted(ti.map_index for ti in mapped) == list(range(shards))
    assert all(ti.state == "success" for ti in mapped)
    assert len(list((predictions_dir / "shards").glob("shard-*.txt"))) == shards
    assert set(report["label_distribution"]) <= {"cat", "dog"}
    assert "accuracy_by_folder" in report

    # The server answers with the model this run trained: compare with ONNX Runtime in-process.
    assert model_dir.name == predictions_dir.name, "one run, one folder name"
    session = ort.InferenceSession(str(served / "model.onnx"), providers=["CPUExecutionProvider"])
    lines = [json.loads(line) for line in (predictions_dir / "predictions.jsonl").read_text().splitlines()]
    images = np.stack([decode_rgb(Path(line["image"]).read_bytes(), 32) for line in lines])
    (probabilities,) = session.run(["probabilities"], {"image": images})
    for line, row in zip(lines, probabilities, strict=True):
        assert line["label"] == manifest["classes"][int(np.argmax(row))]
        assert line["confidence"] == pytest.approx(float(np.max(row)), abs=1e-5)

    # Triton keeps serving after the run, on the ports and state file the deployment set.
    state = local_deployment.state()
    assert state is not None
    assert Path(state.repository) == bucket / "model_repository" / "local"
    assert (bucket / "model_repository" / "local" / "dogs_cats" / "1" / "model.onnx").is_file()


def test_a_second_run_scores_the_served_model_before_replacing_it(
    local_deployment: LocalTriton, tmp_path: Path
) -> None:
    first = _run_dag(tmp_path)
    assert first.state == "success"
    # Same images, same test split: the champion (version 1) is classified through Triton.
    second = _run_dag(tmp_path, champion_tolerance=1.0)
    assert second.state == "success"
    bucket = tmp_path / "bucket"
    first_dir, second_dir = (bucket / "predictions" / safe_name(run.run_id) for run in (first, second))
    verdict = json.loads((second_dir / "report.json").read_text())["champion"]
    assert verdict["deploy"]
    assert not verdict["forced"]
    champion_report = json.loads((second_dir / "champion" / "report.json").read_text())
    served_then = json.loads((first_dir / "report.json").read_text())["evaluation"]
    assert verdict["champion"]["version"] == 1
    assert (
        verdict["champion"]["accuracy"]
        == served_then["accuracy"]
        == champion_report["evaluation"]["accuracy"]
    )
    assert verdict["champion"]["examples"] == served_then["examples"]
    assert verdict["difference_points"] == round(
        100 * (verdict["challenger"]["accuracy"] - verdict["champion"]["accuracy"]), 2
    )
    assert local_deployment.state() is not None
    assert (bucket / "model_repository" / "local" / "dogs_cats" / "2").is_dir(), "the challenger was deployed"


def test_quality_gate_stops_before_packaging_and_says_why(
    local_deployment: LocalTriton, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = _run_dag(tmp_path, min_test_accuracy=1.01)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {
        "plan": "success",
        "stage_data": "success",
        "train": "success",
        "quality_gate": "skipped",
        "package": "skipped",
        "challenge_champion": "skipped",
        "deploy": "skipped",
        "plan_batch": "skipped",
        "list_shards": "skipped",
        "classify_shard": "skipped",
        "merge_predictions": "skipped",
    }
    assert "is under the required 101.00% (min_test_accuracy)" in capfd.readouterr().out
    (model_dir,) = (tmp_path / "bucket" / "models").iterdir()
    assert (model_dir / "metrics.json").is_file(), "the model is kept for inspection"
    assert not (tmp_path / "bucket" / "model_repository").exists()
    assert local_deployment.state() is None, "nothing was served"


@pytest.mark.security
@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            {"data_bucket": "/etc/dogs-cats"},
            "data_bucket='/etc/dogs-cats': /etc/dogs-cats is outside the allowed",
        ),
        ({"source": "http://169.254.169.254/computeMetadata/v1/"}, "a link-local address"),
    ],
)
def test_a_refused_conf_fails_the_first_task_and_nothing_runs_after_it(
    local_deployment: LocalTriton,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    conf: dict[str, str],
    message: str,
) -> None:
    run = _run_dag(tmp_path, **conf)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states.pop("plan") == "failed"
    assert set(states.values()) <= {"upstream_failed", None}, states
    assert message in capfd.readouterr().out
    assert not (tmp_path / "bucket").exists(), "nothing written"
