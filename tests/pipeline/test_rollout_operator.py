"""The kubernetes deploy task: it applies, defers, and undoes on a failed verdict.

RolloutTrigger polls through the provider's async hook and the real
kubernetes_asyncio client, here against an HTTP server answering with the fake
Deployment controller's status (no Kubernetes API server runs here yet)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from core.settings import CanaryParams, Environment, RunConfig
from deploy.canary import Check, Verdict
from deploy.kubernetes import ServingSpec, serving_manifests
from harness.data import write_images
from harness.fake_cluster import Behaviour, FakeCluster
from harness.http_server import reply_json
from model_repository.repository import RepositoryVersion
from pipeline.plan import make_plan
from pipeline.rollout_operator import CanaryAnalysisTrigger, RolloutOperator, RolloutTrigger

CONN_ID = "kubernetes_fake"
CANARY = "dogs-cats-triton-canary"


def _deployment_manifest() -> dict[str, Any]:
    spec = ServingSpec.from_environment(
        Environment(platform="kubernetes"), image="r/dogs-cats-triton:v1", model_name="m", model_version=1
    )
    (deployment,) = [m for m in serving_manifests(spec) if m["kind"] == "Deployment"]
    return deployment


@pytest.fixture
def cluster_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeCluster, list[str]]]:
    """An API server answering GETs of the Deployment from a FakeCluster, and the
    Airflow connection (from the environment) whose kubeconfig points at it."""
    cluster, paths = FakeCluster(), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            reply_json(self, 200, cluster.read_deployment("", ""))

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    try:
        yield cluster, paths
    finally:
        server.shutdown()


def _first_event(behaviour: Behaviour, cluster: FakeCluster, timeout_s: float = 30) -> dict[str, Any]:
    cluster.behaviour = behaviour
    cluster.apply(_deployment_manifest())
    trigger = RolloutTrigger(
        namespace="dogs-cats",
        name="dogs-cats-triton",
        kubernetes_conn_id=CONN_ID,
        deadline=time.time() + timeout_s,
        poll_s=0.01,
    )

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first())


def test_a_rollout_that_completes_fires_success(cluster_api: tuple[FakeCluster, list[str]]) -> None:
    cluster, paths = cluster_api
    event = _first_event("healthy", cluster)
    assert event == {"status": "success", "message": "deployment dogs-cats-triton successfully rolled out"}
    assert set(paths) == {"/apis/apps/v1/namespaces/dogs-cats/deployments/dogs-cats-triton"}
    assert len(paths) > 1, "it polled until the new replicas were available"


def test_a_progress_deadline_fires_failure_with_the_reason(
    cluster_api: tuple[FakeCluster, list[str]],
) -> None:
    event = _first_event("deadline", cluster_api[0])
    assert event["status"] == "failed"
    assert "exceeded its progress deadline" in event["message"]


def test_a_stuck_rollout_fails_at_the_deadline_with_the_last_state(
    cluster_api: tuple[FakeCluster, list[str]],
) -> None:
    event = _first_event("stuck", cluster_api[0], timeout_s=0.5)
    assert event["status"] == "failed"
    assert "not rolled out in time" in event["message"]


def test_the_trigger_survives_serialisation() -> None:
    """The triggerer rebuilds the trigger from what serialize() returns."""
    trigger = RolloutTrigger(namespace="n", name="d", kubernetes_conn_id="k", deadline=12.5, poll_s=3)
    classpath, kwargs = trigger.serialize()
    assert classpath == "pipeline.rollout_operator.RolloutTrigger"
    assert RolloutTrigger(**kwargs).serialize() == (classpath, kwargs)


PROMETHEUS = "http://127.0.0.1:9"  # never asked here: the verdicts are the tests'


def _operator(
    tmp_path: Path, cluster: FakeCluster, version: int, canary: bool = True, **settings: int
) -> RolloutOperator:
    plan = make_plan(RunConfig(data_bucket=str(tmp_path / "bucket"), canary=canary), "run")
    write_images(Path(plan.smoke_images_uri), per_class=2, size=32)
    operator = RolloutOperator(
        task_id="deploy",
        environment=Environment(platform="kubernetes", prometheus_url=PROMETHEUS, **settings),  # type: ignore[arg-type]
        version=RepositoryVersion(str(tmp_path / "repo"), "dogs_cats", version, "onnxruntime", 8),
        image_ref=f"r/dogs-cats-triton:v{version}",
        plan=plan,
    )
    operator._api = lambda: cluster  # type: ignore[method-assign,assignment,return-value]
    return operator


def test_the_operator_applies_then_defers_and_undoes_when_the_trigger_reports_failure(tmp_path: Path) -> None:
    cluster = FakeCluster()
    first = _operator(tmp_path, cluster, 1)
    with pytest.raises(TaskDeferred) as deferred:
        first.execute(_context())
    assert isinstance(deferred.value.trigger, RolloutTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert _image(cluster) == "r/dogs-cats-triton:v1", "applied before deferring"
    cluster.read_deployment("", "")  # the controller rolls revision 1 out

    second = _operator(tmp_path, cluster, 2, canary=False)
    with pytest.raises(TaskDeferred):
        second.execute(_context())
    assert _image(cluster) == "r/dogs-cats-triton:v2"
    verdict = {"status": "failed", "message": "deployment dogs-cats-triton exceeded its progress deadline"}
    # Failed for good (no retry): the same image would fail the same way.
    with pytest.raises(AirflowFailException, match=r"progress deadline .*\(rolled back to revision 1\)"):
        second.execute_complete(_context(), verdict)
    assert _image(cluster) == "r/dogs-cats-triton:v1"


def test_a_deploy_to_a_model_idling_at_zero_waits_for_a_woken_pod_and_lets_it_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smoked: list[int] = []
    monkeypatch.setattr("pipeline.rollout_operator.smoke_test", lambda *args: smoked.append(len(args)))
    monkeypatch.setattr(
        "pipeline.rollout_operator.annotate_served", lambda *args, **kwargs: None
    )  # no asset here
    cluster = FakeCluster()
    operator = _operator(tmp_path, cluster, 1, serving_replicas=0, serving_max_replicas=2)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(_context())
    assert isinstance(deferred.value.trigger, RolloutTrigger)
    assert deferred.value.trigger.at_least == 1, "a pod to smoke-test, woken from zero"
    ((manager, hold),) = cluster.applied_by_others
    assert "autoscaling.keda.sh/force-activation" in hold["metadata"]["annotations"]
    operator.execute_complete(_context(), {"status": "success", "message": "rolled out"})
    assert smoked, "smoke-tested"
    assert [m for m, _ in cluster.applied_by_others] == [manager, manager]
    assert "annotations" not in cluster.applied_by_others[-1][1]["metadata"], "the hold went"


def test_nothing_is_applied_without_images_to_smoke_test_with(tmp_path: Path) -> None:
    cluster = FakeCluster()
    operator = _operator(tmp_path, cluster, 1)
    shutil.rmtree(operator.plan.smoke_images_uri)
    # Failed for good: a retry would find no images either.
    with pytest.raises(AirflowFailException, match="nothing was applied"):
        operator.execute(_context())
    assert cluster.applied == []


@pytest.fixture
def canary_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeCluster, RolloutOperator]:
    """Version 1 serving; version 2's canary applied, rolled out and smoke-tested, its
    analysis deferred to the triggerer."""
    monkeypatch.setattr("pipeline.rollout_operator.smoke_test", lambda *args: None)
    cluster = FakeCluster()
    with pytest.raises(TaskDeferred):
        _operator(tmp_path, cluster, 1).execute(_context())
    cluster.read_deployment("", "")
    second = _operator(tmp_path, cluster, 2)
    with pytest.raises(TaskDeferred) as deferred:
        second.execute(_context())
    assert deferred.value.method_name == "canary_ready"
    assert isinstance(deferred.value.trigger, RolloutTrigger)
    assert deferred.value.trigger.name == CANARY
    canary = cluster.objects["Deployment", CANARY]
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "r/dogs-cats-triton:v2"
    assert canary["spec"]["replicas"] == 2, "half the traffic beside two stable replicas"
    assert _image(cluster) == "r/dogs-cats-triton:v1", "the stable Deployment waits for the verdict"
    assert deferred.value.kwargs == {"replicas": 2, "share": 0.5}
    with pytest.raises(TaskDeferred) as judging:
        second.canary_ready(
            _context(), {"status": "success", "message": "rolled out"}, **deferred.value.kwargs
        )
    trigger = judging.value.trigger
    assert isinstance(trigger, CanaryAnalysisTrigger)
    assert judging.value.method_name == "canary_judged"
    assert trigger.prometheus_url == PROMETHEUS
    assert trigger.judge_at == pytest.approx(time.time() + 120, abs=5), "the default window"
    return cluster, second


def _verdict(failure_ratio: float) -> dict[str, Any]:
    checks = (Check("requests", 200, 20, at_least=True), Check("failure ratio", failure_ratio, 0.01))
    return {"status": "judged", "verdict": Verdict(2, 0.5, 120, checks).to_dict()}


def test_an_aborted_canary_goes_and_the_stable_deployment_is_untouched(
    canary_started: tuple[FakeCluster, RolloutOperator],
) -> None:
    cluster, operator = canary_started
    context = _context()
    with pytest.raises(AirflowFailException, match=r"aborted: failure ratio 0\.2 > 0\.01"):
        operator.canary_judged(context, _verdict(0.2), replicas=2)
    assert ("Deployment", CANARY) not in cluster.objects
    assert ("Service", CANARY) not in cluster.objects
    assert _image(cluster) == "r/dogs-cats-triton:v1"
    assert context["ti"].pushed["canary"]["promoted"] is False, "the report shows the verdict"


def test_a_promoted_canary_rolls_the_stable_deployment_and_goes_after_it(
    canary_started: tuple[FakeCluster, RolloutOperator],
) -> None:
    cluster, operator = canary_started
    with pytest.raises(TaskDeferred) as deferred:
        operator.canary_judged(_context(), _verdict(0.0), replicas=2)
    assert deferred.value.method_name == "execute_complete"
    assert _image(cluster) == "r/dogs-cats-triton:v2"
    assert ("Deployment", CANARY) in cluster.objects, "it serves until the stable pods have rolled"
    cluster.read_deployment("", "")
    failed = {"status": "failed", "message": "deployment dogs-cats-triton exceeded its progress deadline"}
    with pytest.raises(AirflowFailException, match=r"rolled back to revision 1"):
        operator.execute_complete(_context(), failed)
    assert ("Deployment", CANARY) not in cluster.objects


def test_a_canary_that_never_gets_ready_goes_and_fails_the_task(
    canary_started: tuple[FakeCluster, RolloutOperator],
) -> None:
    cluster, operator = canary_started
    with pytest.raises(AirflowFailException, match=r"canary of version 2 failed: .*untouched"):
        operator.canary_ready(
            _context(), {"status": "failed", "message": "not rolled out in time"}, replicas=2, share=0.5
        )
    assert ("Deployment", CANARY) not in cluster.objects
    assert _image(cluster) == "r/dogs-cats-triton:v1"


def test_a_canary_needs_prometheus_and_nothing_is_applied_without_it(tmp_path: Path) -> None:
    cluster = FakeCluster()
    with pytest.raises(TaskDeferred):
        _operator(tmp_path, cluster, 1).execute(_context())
    second = _operator(tmp_path, cluster, 2)
    second.environment = Environment(platform="kubernetes")
    applied = len(cluster.applied)
    with pytest.raises(AirflowFailException, match="DOGS_CATS_PROMETHEUS_URL is empty"):
        second.execute(_context())
    assert len(cluster.applied) == applied


def test_the_analysis_trigger_survives_serialisation() -> None:
    trigger = CanaryAnalysisTrigger(
        prometheus_url=PROMETHEUS,
        model_name="m",
        version=2,
        params=CanaryParams().model_dump(),
        share=0.5,
        judge_at=1.5,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "pipeline.rollout_operator.CanaryAnalysisTrigger"
    assert CanaryAnalysisTrigger(**kwargs).serialize() == (classpath, kwargs)


class _TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _context() -> Any:
    """What the operator reads of a task's context: the task instance it pushes XCom with, and
    the run its wake hold is named after."""
    return {"ti": _TaskInstance(), "dag": DAG(dag_id="dogs_cats"), "run_id": "manual__1"}


def _image(cluster: FakeCluster) -> str:
    assert cluster.deployment is not None
    return str(cluster.deployment["spec"]["template"]["spec"]["containers"][0]["image"])
