"""The whole `dogs_cats` DAG on the real single-node cluster, under the live scheduler.

DOGS_CATS_PLATFORM=kubernetes with the cluster's settings (cluster/platform_setup.py):
the bucket is gs:// on the cluster's GCS emulator, training runs in a pod of
the CPU training image, BuildKit builds the Triton image in a pod and pushes it
to the cluster's registry, the deploy task rolls it out with server-side apply
and smoke-tests it through the Service, and batch inference reaches Triton at
the Service's ClusterIP. On the way: a training pod deleted mid-run is retried
and resumes from its checkpoint; a second model passes its canary (half the
traffic, judged on Prometheus' figures) and rolls out while a client sends
requests without one failing; `kubectl rollout status/history/undo` work on
what the DAG deployed and the DAG deploys again after an undo; a broken model's
canary never becomes ready and goes, and the previous one answers throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from cluster.node import GCS_ENDPOINT, Node
from cluster.platform_setup import (
    NAMESPACE,
    create_bucket,
    install_monitoring,
    kubernetes_environment,
    prepare_namespace,
)
from core import storage
from core.constants import MODEL_NAME
from core.images import decode_rgb
from core.settings import join_uri
from deploy.monitoring import PrometheusApi
from harness.airflow import running_stack, stored_plan, wait_until_finished
from harness.cluster import IMAGE_BUILDING_TIMEOUT_S, Hammer, kubectl, project_images, running_cluster
from harness.data import write_images
from harness.gcs import storage_on_emulator
from pipeline.plan import RunPlan
from pipeline.stack import AirflowApi, AirflowStack, wait_for
from training.staging import read_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.timeout(IMAGE_BUILDING_TIMEOUT_S)]
DAG = "dogs_cats"
BUCKET = "dogs-cats-cluster"
DEPLOYMENT = "deployment/dogs-cats-triton"
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_cluster() as node:
        yield node


@pytest.fixture(scope="module")
def prometheus(node: Node) -> PrometheusApi:
    return PrometheusApi(install_monitoring(node))


@pytest.fixture(scope="module")
def stack(
    node: Node, prometheus: PrometheusApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AirflowStack]:
    images = project_images(node)
    prepare_namespace(node)
    create_bucket(BUCKET)
    settings = kubernetes_environment(node, images, prometheus.url)
    # A broken model is judged by the rollout's deadline: short here, so the test stays short.
    settings["DOGS_CATS_ROLLOUT_TIMEOUT_S"] = "150"
    with running_stack(tmp_path_factory.mktemp("cluster-dag"), settings) as stack:
        stack.wait_for_dag(DAG)
        yield stack


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    source = write_images(tmp_path_factory.mktemp("source"), per_class=64, size=IMAGE_SIZE)
    return {
        "data_bucket": f"gs://{BUCKET}",
        "source": str(source),
        "model": "small",
        "image_size": IMAGE_SIZE,
        # Long enough to delete the training pod mid-run (about a second an epoch here).
        "epochs": 30,
        "early_stopping_patience": 30,
        "batch_size": 8,
        "max_batch_size": 8,
        "min_test_accuracy": 0.0,
        # Every run replaces the served model: the champion is scored and its verdict recorded, but
        # a dozen test images must not decide whether the rollout tests below get their version 2.
        "champion_tolerance": 1.0,
        # The second version's canary serves half the traffic this long before it is judged.
        "canary_window_s": 30,
    }


@pytest.fixture(scope="module")
def first_run(stack: AirflowStack, node: Node, conf: dict[str, Any]) -> dict[str, Any]:
    """Run 1; its training pod is deleted once two epochs are checkpointed in the bucket."""
    api = stack.api()
    run_id = api.trigger(DAG, conf)
    plan: RunPlan = wait_for("the plan", lambda: stored_plan(api, run_id), 120)
    state = join_uri(plan.model_uri, "checkpoints", "state.json")

    def two_epochs_checkpointed() -> bool:
        return storage.exists(state) and json.loads(storage.read_text(state))["completed_epochs"] >= 2

    with storage_on_emulator(GCS_ENDPOINT):
        wait_for("two epochs of run 1 in its checkpoint", two_epochs_checkpointed, 600, 0.5)
    pods = kubectl(
        node, "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=training", "-o", "name"
    )
    (pod,) = pods.stdout.split()
    kubectl(node, "delete", "-n", NAMESPACE, pod, "--wait=false")
    run = wait_until_finished(api, DAG, run_id, 1500)
    return {**run, "plan": plan}


def test_every_stage_runs_on_the_cluster(stack: AirflowStack, node: Node, first_run: dict[str, Any]) -> None:
    api, run_id = stack.api(), first_run["dag_run_id"]
    states = {(ti["task_id"], ti.get("map_index", -1)): ti["state"] for ti in api.task_instances(DAG, run_id)}
    assert first_run["state"] == "success", states
    assert set(states.values()) == {"success"}
    plan: RunPlan = first_run["plan"]
    assert plan.config.platform == "kubernetes"
    assert plan.model_uri.startswith(f"gs://{BUCKET}/")
    # The image BuildKit pushed is the one the Deployment runs.
    image = kubectl(node, "get", DEPLOYMENT, "-n", NAMESPACE, "-o", "jsonpath={..containers[0].image}").stdout
    assert image.startswith("10.88.0.1:5000/dogs-cats-triton:v1-")
    assert "pushing manifest for " + image in _task_log(api, run_id, "build_image", 1)


def test_prometheus_reads_the_served_pods_after_the_smoke_test(
    prometheus: PrometheusApi, first_run: dict[str, Any]
) -> None:
    """The deploy task's smoke test reached the pods; Prometheus, finding them through the API,
    has their counters labelled with namespace, pod, model version and track."""
    by = "namespace, pod, version, track"
    query = f'sum by ({by}) (nv_inference_request_success{{model="{MODEL_NAME}"}}) > 0'
    samples = wait_for("Prometheus to scrape the served pods", lambda: prometheus.query(query), 120)
    labels = [sample["metric"] for sample in samples]
    assert {(m["namespace"], m["version"], m["track"]) for m in labels} == {(NAMESPACE, "1", "stable")}
    assert all(m["pod"].startswith("dogs-cats-triton-") for m in labels)
    rate = f'model_version_track:nv_inference_request_success:rate1m{{model="{MODEL_NAME}"}}'
    assert wait_for("the recording rules to evaluate", lambda: prometheus.query(rate), 60)


def test_a_deleted_training_pod_is_retried_and_resumes_from_its_checkpoint(
    stack: AirflowStack, first_run: dict[str, Any]
) -> None:
    api, run_id = stack.api(), first_run["dag_run_id"]
    (train,) = [ti for ti in api.task_instances(DAG, run_id) if ti["task_id"] == "train"]
    assert train["try_number"] == 2
    retried = _task_log(api, run_id, "train", 2)
    assert "resuming after epoch" in retried, "the pod's log streams into the task log"


def test_predictions_match_in_process_onnx_runtime(first_run: dict[str, Any], tmp_path: Path) -> None:
    plan: RunPlan = first_run["plan"]
    with storage_on_emulator(GCS_ENDPOINT):
        lines = [
            json.loads(line)
            for line in storage.read_text(join_uri(plan.predictions_uri, "predictions.jsonl")).splitlines()
        ]
        report = json.loads(storage.read_text(join_uri(plan.predictions_uri, "report.json")))
        model = tmp_path / "model.onnx"  # what Triton serves: FP32 or the INT8 twin, as packaging chose
        storage.download_file(join_uri(plan.repository_uri, MODEL_NAME, "1", "model.onnx"), model)
        images = np.stack([decode_rgb(storage.read_bytes(line["image"]), IMAGE_SIZE) for line in lines])
        classes = read_manifest(plan.dataset_uri)["classes"]
    assert lines
    assert report["failed"] == 0
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": images})
    for line, row in zip(lines, probabilities, strict=True):
        assert line["label"] == classes[int(np.argmax(row))]
        assert line["confidence"] == pytest.approx(float(np.max(row)), abs=1e-5)


@pytest.fixture(scope="module")
def second_run(
    stack: AirflowStack, node: Node, conf: dict[str, Any], first_run: dict[str, Any]
) -> dict[str, Any]:
    """Run 2 (a new model, version 2) while a client calls the Service throughout."""
    api = stack.api()
    with Hammer(_service_url(node)) as hammer:
        run = wait_until_finished(api, DAG, api.trigger(DAG, conf), 1500)
        # Until the old pod has exited: a kept-alive connection stays on it until then.
        wait_for("only the new pod", lambda: _serving_pods(node) == 1, 180)
        # Then answers on both kinds of connection with the old pod gone (the loop alternates).
        answered = hammer.answered
        wait_for("ten answers from the new pod alone", lambda: hammer.answered >= answered + 10, 120, 0.2)
    return {**run, "hammer": hammer}


def test_a_new_model_passes_its_canary_and_rolls_out_with_no_failed_request(
    stack: AirflowStack, node: Node, second_run: dict[str, Any]
) -> None:
    hammer: Hammer = second_run["hammer"]
    assert second_run["state"] == "success"
    assert hammer.failures == [], hammer.failures[:3]
    assert hammer.answered > 50
    assert hammer.versions_seen[0] == "1", hammer.versions_seen
    assert hammer.versions_seen[-1] == "2", hammer.versions_seen
    log = _task_log(stack.api(), second_run["dag_run_id"], "deploy", 1)
    assert "canary of version 2 (50% of the traffic for 30 s) promoted" in log
    deployments = kubectl(node, "get", "deployments", "-n", NAMESPACE, "-o", "name").stdout.split()
    assert deployments == ["deployment.apps/dogs-cats-triton"], "the canary is gone"
    plan = stored_plan(stack.api(), second_run["dag_run_id"])
    assert plan is not None
    with storage_on_emulator(GCS_ENDPOINT):
        report = json.loads(storage.read_text(join_uri(plan.predictions_uri, "report.json")))
    canary = report["serving"]["canary"]
    assert canary["promoted"] is True
    # Version 1 was scored through the Service on this run's test split before version 2 went out.
    verdict = report["champion"]
    assert verdict["champion"]["version"] == 1
    assert verdict["champion"]["examples"] == verdict["challenger"]["examples"] > 0
    assert verdict["deploy"]
    assert {check["metric"] for check in canary["checks"]} >= {"requests", "failure ratio", "p99 ms"}
    assert report["serving"]["by_version_and_track"]["2/canary"]["requests"] > 0


def test_kubectl_rollout_undo_and_a_deploy_after_it(
    stack: AirflowStack, node: Node, second_run: dict[str, Any]
) -> None:
    assert "successfully rolled out" in kubectl(node, "rollout", "status", DEPLOYMENT, "-n", NAMESPACE).stdout
    history = kubectl(node, "rollout", "history", DEPLOYMENT, "-n", NAMESPACE).stdout
    assert len([line for line in history.splitlines() if line[:1].isdigit()]) >= 2, history
    assert "dogs_cats version 2 (10.88.0.1:5000/dogs-cats-triton:v2-" in history, history
    kubectl(node, "rollout", "undo", DEPLOYMENT, "-n", NAMESPACE)
    kubectl(node, "rollout", "status", DEPLOYMENT, "-n", NAMESPACE, "--timeout=300s")
    wait_for("the old pod to go", lambda: _serving_pods(node) == 1, 180)
    assert _served_version(node) == "1"

    # The deploy task again, after kubectl's undo left its own field manager on the template; its
    # canary is judged on the traffic of a client calling throughout.
    api, run_id = stack.api(), second_run["dag_run_id"]
    with Hammer(_service_url(node)) as hammer:
        _clear(api, run_id, "deploy")
        run = wait_until_finished(api, DAG, run_id, 900)
    assert run["state"] == "success"
    assert hammer.failures == [], hammer.failures[:3]
    wait_for("the old pod to go", lambda: _serving_pods(node) == 1, 180)
    assert _served_version(node) == "2"


def test_a_broken_model_s_canary_never_serves_and_the_stable_version_answers_throughout(
    stack: AirflowStack, node: Node, second_run: dict[str, Any]
) -> None:
    api, run_id = stack.api(), second_run["dag_run_id"]
    plan = stored_plan(api, run_id)
    assert plan is not None
    revision_before, good_image = _revision(node), _image(node)
    with storage_on_emulator(GCS_ENDPOINT):
        storage.write_bytes(
            join_uri(plan.repository_uri, MODEL_NAME, "2", "model.onnx"), b"not an onnx model"
        )
    with Hammer(_service_url(node)) as hammer:
        _clear(api, run_id, "build_context")  # a new context, a new image, a new rollout
        run = wait_until_finished(api, DAG, run_id, 1200)
        wait_for("the broken pod to go", lambda: _serving_pods(node) == 1, 180)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG, run_id)}
    assert run["state"] == "failed"
    assert states["build_image"] == "success", states
    assert states["deploy"] == "failed", states
    message = _task_log(api, run_id, "deploy", _try_number(api, run_id, "deploy"))
    assert "canary of version 2 failed" in message  # the same version, rebuilt broken
    assert "not rolled out" in message
    assert "the stable Deployment is untouched" in message
    assert hammer.failures == [], hammer.failures[:3]
    assert set(hammer.versions_seen) == {"2"}
    assert _served_version(node) == "2"
    assert _revision(node) == revision_before, "the stable Deployment never saw the broken image"
    assert _image(node) == good_image


def _service_url(node: Node) -> str:
    ip = kubectl(
        node, "get", "service", "dogs-cats-triton", "-n", NAMESPACE, "-o", "jsonpath={.spec.clusterIP}"
    )
    return f"{ip.stdout}:8000"


def _served_version(node: Node) -> str:
    from client.triton import Triton

    triton = Triton(_service_url(node), "http", timeout_s=10)
    try:
        return max(triton.served_versions(MODEL_NAME))
    finally:
        triton.close()


def _serving_pods(node: Node) -> int:
    """Pods behind the Service, terminating ones included."""
    selector = "app.kubernetes.io/name=dogs-cats-triton"
    pods = kubectl(node, "get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json").stdout
    return len(json.loads(pods)["items"])


def _revision(node: Node) -> int:
    jsonpath = "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
    return int(kubectl(node, "get", DEPLOYMENT, "-n", NAMESPACE, "-o", jsonpath).stdout)


def _image(node: Node) -> str:
    return kubectl(node, "get", DEPLOYMENT, "-n", NAMESPACE, "-o", "jsonpath={..containers[0].image}").stdout


def _clear(api: AirflowApi, run_id: str, task_id: str) -> None:
    """Clear a task and everything after it, as the UI's Clear button does; the run is queued again."""
    status, body = api.request(
        "POST",
        f"/api/v2/dags/{DAG}/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": [task_id],
            "include_downstream": True,
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    assert status == 200, body
    wait_for(
        "the run to be queued again", lambda: api.dag_run(DAG, run_id)["state"] in ("queued", "running"), 30
    )


def _try_number(api: AirflowApi, run_id: str, task_id: str) -> int:
    (instance,) = [ti for ti in api.task_instances(DAG, run_id) if ti["task_id"] == task_id]
    return int(instance["try_number"])


def _task_log(api: AirflowApi, run_id: str, task_id: str, try_number: int) -> str:
    status, body = api.request(
        "GET",
        f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}?full_content=true",
    )
    assert status == 200, body
    return json.dumps(body)
