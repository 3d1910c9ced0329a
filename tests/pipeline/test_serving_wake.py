"""The batch stage's wake on kubernetes: it holds, defers the wait for a pod, and lets its hold
go when the wake fails (the teardown runs only after a setup that succeeded)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from core.settings import Environment
from deploy.kubernetes import FORCE_ACTIVATION
from deploy.rollout import RolloutFailed, start_serving
from harness.data import write_images
from harness.fake_cluster import FakeCluster
from harness.http_server import reply_json
from model_repository.repository import RepositoryVersion
from pipeline.rollout_operator import RolloutTrigger
from pipeline.serving_wake import WakeOperator

CONTEXT: Any = {"dag": DAG(dag_id="dogs_cats_batch"), "run_id": "manual__1"}


@pytest.fixture
def ready_triton() -> Iterator[str]:
    """host:port of a server that says ready as Triton does."""

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reply_json(self, 200 if self.path == "/v2/health/ready" else 404, {})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _environment(replicas: int, serving_url: str = "") -> Environment:
    return Environment(
        platform="kubernetes",
        serving_replicas=replicas,
        serving_max_replicas=2,
        prometheus_url="http://prometheus:9090",
        serving_url=serving_url,
    )


def _wake(monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster, environment: Environment) -> WakeOperator:
    monkeypatch.setattr("pipeline.serving_wake.cluster_api", lambda environment: cluster)
    return WakeOperator(task_id="wake_serving", environment=environment)


@pytest.fixture
def deployed(tmp_path: Path) -> FakeCluster:
    cluster = FakeCluster()
    images = write_images(tmp_path / "smoke", per_class=1, size=16)
    start_serving(
        cluster, RepositoryVersion("r", "m", 1, "onnxruntime", 8), "r/i:v1", str(images), _environment(0)
    )
    return cluster


def _holds(cluster: FakeCluster) -> list[bool]:
    """For each wake apply: a hold (True) or a release (False)."""
    return [FORCE_ACTIVATION in m["metadata"].get("annotations", {}) for _, m in cluster.applied_by_others]


def test_a_model_that_never_idles_is_not_held(monkeypatch: pytest.MonkeyPatch, deployed: FakeCluster) -> None:
    _wake(monkeypatch, deployed, _environment(1)).execute(CONTEXT)  # returns: no deferral
    assert deployed.applied_by_others == []


def test_an_idle_model_is_held_and_the_wait_for_a_pod_deferred(
    monkeypatch: pytest.MonkeyPatch, deployed: FakeCluster
) -> None:
    with pytest.raises(TaskDeferred) as deferred:
        _wake(monkeypatch, deployed, _environment(0)).execute(CONTEXT)
    trigger = deferred.value.trigger
    assert isinstance(trigger, RolloutTrigger)
    assert (trigger.name, trigger.at_least) == ("dogs-cats-triton", 1)
    assert deferred.value.method_name == "execute_complete"
    assert _holds(deployed) == [True]


def test_a_woken_model_is_ready_once_its_service_answers(
    monkeypatch: pytest.MonkeyPatch, deployed: FakeCluster, ready_triton: str
) -> None:
    wake = _wake(monkeypatch, deployed, _environment(0, serving_url=ready_triton))
    wake.execute_complete(CONTEXT, {"status": "success", "message": "deployment rolled out"})
    assert _holds(deployed) == [], "held until the teardown"


def test_a_wake_that_fails_lets_its_hold_go(monkeypatch: pytest.MonkeyPatch, deployed: FakeCluster) -> None:
    wake = _wake(monkeypatch, deployed, _environment(0))
    with pytest.raises(TaskDeferred):
        wake.execute(CONTEXT)
    with pytest.raises(RolloutFailed, match="not rolled out in time"):
        wake.execute_complete(CONTEXT, {"status": "failed", "message": "deployment not rolled out in time"})
    assert _holds(deployed) == [True, False]
    assert len({manager for manager, _ in deployed.applied_by_others}) == 1, "its own hold"


def test_nothing_deployed_fails_the_wake_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AirflowFailException, match="deploy a model with these settings first"):
        _wake(monkeypatch, FakeCluster(), _environment(0)).execute(CONTEXT)
