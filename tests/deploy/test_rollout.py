"""Rollout, smoke test and rollback against a fake of the apps/v1 Deployment
controller (no API server runs here), plus what the real client sends."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client

from core.settings import Environment
from deploy.__main__ import main as deploy_main
from deploy.kubernetes import ServingSpec, retired_manifests, serving_manifests
from deploy.rollout import (
    FIELD_MANAGER,
    DeploymentFailed,
    KubernetesApi,
    RolloutFailed,
    SmokeTest,
    finish_serving,
    rollout_progress,
    start_serving,
    wait_for_rollout,
    wait_until_answering,
    wait_until_replaced_pods_leave,
)
from harness.fake_cluster import FakeCluster
from harness.http_server import reply_json
from model_repository.repository import RepositoryVersion


class FakeTime:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> float:
        return self.now


NAME = "dogs-cats-triton"


def _spec(version: int, max_replicas: int = 0) -> ServingSpec:
    return ServingSpec.from_environment(
        Environment(
            platform="kubernetes", serving_max_replicas=max_replicas, prometheus_url="http://prometheus:9090"
        ),
        image=f"r/dogs-cats-triton:v{version}",
        model_name="m",
        model_version=version,
    )


def _manifests(version: int) -> list[dict[str, Any]]:
    return serving_manifests(_spec(version))


def _roll_out(
    cluster: FakeCluster,
    smoke_images: Path,
    version: int,
    smoke: SmokeTest | None = None,
    max_replicas: int = 0,
) -> str:
    """What the deploy task runs, `start_serving` then `finish_serving`, with the wait in
    fake time and the smoke test passed in; returns the rollout's last status message."""
    time, messages = FakeTime(), []
    environment = Environment(
        platform="kubernetes", serving_max_replicas=max_replicas, prometheus_url="http://prometheus:9090"
    )
    packaged = RepositoryVersion("r", "m", version, "onnxruntime", 8)
    spec = start_serving(cluster, packaged, f"r/dogs-cats-triton:v{version}", str(smoke_images), environment)

    def rolled_out() -> str:
        messages.append(
            wait_for_rollout(
                cluster, spec.namespace, spec.name, timeout_s=5, poll_s=1, sleep=time.sleep, clock=time.clock
            )
        )
        return messages[-1]

    finish_serving(cluster, spec, str(smoke_images), environment, rolled_out, smoke or (lambda *_: None))
    return messages[-1]


@pytest.fixture
def smoke_images(tmp_path: Path) -> Path:
    (tmp_path / "cat.jpg").write_bytes(b"the smoke test is passed in: these bytes go to it unread")
    return tmp_path


def _image(cluster: FakeCluster) -> str:
    assert cluster.deployment is not None
    return str(cluster.deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_a_healthy_rollout_completes_and_is_smoke_tested(smoke_images: Path) -> None:
    cluster, smoked = FakeCluster(), []
    message = _roll_out(
        cluster, smoke_images, 1, lambda url, model, version, images: smoked.append((version, images))
    )
    assert "successfully rolled out" in message
    assert smoked == [(1, [(smoke_images / "cat.jpg").read_bytes()])]
    assert [m["kind"] for m in cluster.applied] == ["Service", "PodDisruptionBudget", "Deployment"]


def test_the_smoke_test_waits_until_the_replaced_pods_have_left_the_service(smoke_images: Path) -> None:
    """A replaced pod serves on behind the Service after the rollout is done; smoke-testing
    then met the old version in a clean-clone run."""
    cluster, left_at_smoke = FakeCluster(), []
    cluster.draining = 1
    _roll_out(cluster, smoke_images, 1, lambda *_: left_at_smoke.append(cluster.draining))
    assert left_at_smoke == [0]


def test_pods_that_never_leave_are_reported_and_the_smoke_test_goes_ahead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = FakeCluster()
    cluster.draining = 5
    wait_until_replaced_pods_leave(cluster, "ns", {"app": "a"}, timeout_s=0)
    assert "the replaced pods (app=a) in ns to go; smoke-testing anyway" in caplog.text


def test_rerunning_the_same_deploy_changes_nothing(smoke_images: Path) -> None:
    cluster = FakeCluster()
    _roll_out(cluster, smoke_images, 1)
    _roll_out(cluster, smoke_images, 1)
    assert cluster.deployment is not None
    assert cluster.deployment["metadata"]["generation"] == 1
    assert len(cluster.replica_sets) == 1


def test_turning_autoscaling_off_deletes_the_scaled_object_and_restores_the_replica_count(
    smoke_images: Path,
) -> None:
    cluster = FakeCluster()
    cluster.create(
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": NAME}}
    )
    _roll_out(cluster, smoke_images, 1, max_replicas=4)
    assert ("HorizontalPodAutoscaler", NAME) not in cluster.objects, "an earlier release's HPA goes"
    assert ("ScaledObject", NAME) in cluster.objects
    assert "replicas" not in cluster.objects["Deployment", NAME]["spec"], "KEDA owns it"
    _roll_out(cluster, smoke_images, 2)
    assert ("ScaledObject", NAME) not in cluster.objects
    assert cluster.objects["Deployment", NAME]["spec"]["replicas"] == 2


def test_a_deployment_selecting_its_pods_otherwise_is_refused_with_what_to_do(smoke_images: Path) -> None:
    """A Deployment made before each track had its own selector cannot take the new one."""
    cluster = FakeCluster()
    _roll_out(cluster, smoke_images, 1)
    assert cluster.deployment is not None
    del cluster.deployment["spec"]["selector"]["matchLabels"]["dogs-cats-triton/track"]
    applied = len(cluster.applied)
    with pytest.raises(DeploymentFailed, match=r"a selector cannot change: delete the Deployment once"):
        _roll_out(cluster, smoke_images, 2)
    assert len(cluster.applied) == applied, "nothing was applied"


def test_a_stuck_rollout_times_out_and_rolls_back(smoke_images: Path) -> None:
    cluster = FakeCluster()
    _roll_out(cluster, smoke_images, 1)
    cluster.behaviour = "stuck"
    with pytest.raises(DeploymentFailed, match=r"not rolled out after 5 s.*\(rolled back to revision 1\)"):
        _roll_out(cluster, smoke_images, 2)
    assert _image(cluster) == "r/dogs-cats-triton:v1"
    (restored,) = cluster.templates_replaced
    assert "pod-template-hash" not in restored["metadata"]["labels"], "as kubectl rollout undo strips it"


def test_a_failed_rollout_rolls_back_and_names_the_reason(smoke_images: Path) -> None:
    cluster = FakeCluster()
    _roll_out(cluster, smoke_images, 1)
    cluster.behaviour = "deadline"
    with pytest.raises(DeploymentFailed, match=r"exceeded its progress deadline.*rolled back to revision 1"):
        _roll_out(cluster, smoke_images, 2)
    assert _image(cluster) == "r/dogs-cats-triton:v1"


def test_a_failed_smoke_test_rolls_back(smoke_images: Path) -> None:
    cluster = FakeCluster()
    _roll_out(cluster, smoke_images, 1)
    _roll_out(cluster, smoke_images, 2)

    def failing_smoke(url: str, model: str, version: int, images: list[bytes]) -> None:
        raise RolloutFailed(f"smoke test: serves versions ['2'], not {version}")

    with pytest.raises(DeploymentFailed, match=r"smoke test.*rolled back to revision 2"):
        _roll_out(cluster, smoke_images, 3, failing_smoke)
    assert _image(cluster) == "r/dogs-cats-triton:v2"


def test_a_first_deploy_that_fails_has_nothing_to_roll_back_to(smoke_images: Path) -> None:
    with pytest.raises(DeploymentFailed, match="no earlier revision to roll back to"):
        _roll_out(FakeCluster("deadline"), smoke_images, 1)


ROLLED = {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2}


@pytest.mark.parametrize(
    ("status", "done", "message"),
    [
        ({}, False, "observe"),
        ({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 2}, False, "1 of 2 new replicas"),
        ({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3}, False, "1 old replicas are pending"),
        ({**ROLLED, "availableReplicas": 1}, False, "1 of 2 updated replicas are available"),
        ({**ROLLED, "availableReplicas": 2}, True, "successfully rolled out"),
    ],
)
def test_progress_is_judged_as_kubectl_rollout_status_does(status: dict, done: bool, message: str) -> None:
    deployment = {"metadata": {"name": "d", "generation": 2}, "spec": {"replicas": 2}, "status": status}
    assert rollout_progress(deployment)[0] is done
    assert message in rollout_progress(deployment)[1]


def test_a_deployment_woken_from_zero_is_done_only_with_a_pod_available() -> None:
    """At zero a new version rolls out with no pod at all: the deploy waits for KEDA's."""
    idle = {
        "metadata": {"name": "d", "generation": 2},
        "spec": {"replicas": 0},
        "status": {"observedGeneration": 2},
    }
    assert rollout_progress(idle)[0] is True
    assert rollout_progress(idle, at_least=1) == (
        False,
        "0 of 1 replicas are available: waiting for KEDA to wake d",
    )
    one = {"updatedReplicas": 1, "replicas": 1}
    woken = {**idle, "spec": {"replicas": 1}, "status": {**ROLLED, **one, "availableReplicas": 1}}
    assert rollout_progress(woken, at_least=1) == (True, "deployment d successfully rolled out")


def test_waiting_gives_up_with_the_last_state_seen() -> None:
    cluster = FakeCluster("stuck")
    cluster.apply(_manifests(1)[2])
    time = FakeTime()
    with pytest.raises(RolloutFailed, match="1 old replicas are pending termination"):
        wait_for_rollout(cluster, "ns", "d", timeout_s=3, poll_s=1, sleep=time.sleep, clock=time.clock)


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_PATCH(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.requests.append(
            {"path": self.path, "content_type": self.headers["Content-Type"], "body": json.loads(body)}
        )
        reply_json(self, 200, {"kind": "Deployment", "metadata": {"name": "x"}})

    def do_GET(self) -> None:
        _Recorder.requests.append({"path": self.path, "method": "GET"})
        pods = [
            {"metadata": {"name": "new"}},
            {"metadata": {"name": "old", "deletionTimestamp": "2026-12-06T16:32:49Z"}},
        ]
        reply_json(self, 200, {"apiVersion": "v1", "kind": "PodList", "items": pods})

    def do_DELETE(self) -> None:
        _Recorder.requests.append({"path": self.path, "method": "DELETE"})
        found = "missing" not in self.path
        reply_json(self, 200 if found else 404, {"kind": "Status", "code": 200 if found else 404})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    """A local HTTP server that records what the real kubernetes client sends."""
    _Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _api(host: str) -> KubernetesApi:
    configuration = k8s_client.Configuration()
    configuration.host = host
    return KubernetesApi(k8s_client.ApiClient(configuration))


def test_apply_is_a_server_side_apply_request(api_server: str) -> None:
    api = _api(api_server)
    for manifest in _manifests(1):
        api.apply(manifest)
    paths = [request["path"] for request in _Recorder.requests]
    query = f"?fieldManager={FIELD_MANAGER}&force=true"
    assert paths == [
        f"/api/v1/namespaces/dogs-cats/services/dogs-cats-triton{query}",
        f"/apis/policy/v1/namespaces/dogs-cats/poddisruptionbudgets/dogs-cats-triton{query}",
        f"/apis/apps/v1/namespaces/dogs-cats/deployments/dogs-cats-triton{query}",
    ]
    assert {request["content_type"] for request in _Recorder.requests} == {"application/apply-patch+yaml"}
    assert _Recorder.requests[2]["body"] == _manifests(1)[2]


def test_undo_sends_a_json_patch_of_the_template(api_server: str) -> None:
    template = {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": []}}
    _api(api_server).replace_pod_template("ns", "d", template)
    (request,) = _Recorder.requests
    assert request["path"] == "/apis/apps/v1/namespaces/ns/deployments/d"
    assert request["content_type"] == "application/json-patch+json"
    assert request["body"] == [{"op": "replace", "path": "/spec/template", "value": template}]


def test_terminating_pods_counts_the_deleted_pods_the_selector_matches(api_server: str) -> None:
    assert _api(api_server).terminating_pods("ns", {"b": "2", "a": "1"}) == 1
    (request,) = _Recorder.requests
    assert request["path"] == "/api/v1/namespaces/ns/pods?labelSelector=a%3D1%2Cb%3D2"


def test_delete_removes_the_named_object_and_tolerates_its_absence(api_server: str) -> None:
    api = _api(api_server)
    hpa, scaled = retired_manifests(_spec(1))
    assert api.delete(hpa) is True
    assert api.delete(scaled) is True
    missing = {**hpa, "metadata": {**hpa["metadata"], "name": "missing"}}
    assert api.delete(missing) is False
    assert [request["path"] for request in _Recorder.requests] == [
        "/apis/autoscaling/v2/namespaces/dogs-cats/horizontalpodautoscalers/dogs-cats-triton",
        "/apis/keda.sh/v1alpha1/namespaces/dogs-cats/scaledobjects/dogs-cats-triton",
        "/apis/autoscaling/v2/namespaces/dogs-cats/horizontalpodautoscalers/missing",
    ]


@pytest.mark.parametrize("max_replicas", [0, 4])
def test_the_printed_manifests_are_what_the_deploy_task_applies(
    smoke_images: Path, max_replicas: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m deploy manifests` against the objects start_serving sends to the API server."""
    monkeypatch.setenv("DOGS_CATS_PLATFORM", "kubernetes")
    monkeypatch.setenv("DOGS_CATS_SERVING_MAX_REPLICAS", str(max_replicas))
    monkeypatch.setenv("DOGS_CATS_PROMETHEUS_URL", "http://prometheus:9090")
    image = "r/dogs-cats-triton:v7"
    assert deploy_main(["manifests", "--image", image, "--model-version", "7", "--model", "m"]) == 0
    printed = capsys.readouterr().out
    cluster = FakeCluster()
    start_serving(
        cluster, RepositoryVersion("r", "m", 7, "onnxruntime", 8), image, str(smoke_images), Environment()
    )
    assert list(yaml.safe_load_all(printed)) == cluster.applied
    assert "deletes, if present: HorizontalPodAutoscaler/dogs-cats-triton" in printed  # before KEDA
    retired = printed.split("deletes, if present: ")[1].split("\n")[0]
    assert ("ScaledObject/dogs-cats-triton" in retired) is (max_replicas == 0)
    assert "creates, if absent,\n# Secret/dogs-cats-triton-admin" in printed


@pytest.mark.security
def test_the_admin_key_secret_is_made_once_and_never_printed_or_overwritten(smoke_images: Path) -> None:
    cluster = FakeCluster()
    _roll_out(cluster, smoke_images, 1)
    secret = cluster.objects["Secret", "dogs-cats-triton-admin"]
    key = secret["stringData"]["admin-key"]
    assert len(key) >= 43, "32 random bytes"
    _roll_out(cluster, smoke_images, 2)
    assert cluster.objects["Secret", "dogs-cats-triton-admin"]["stringData"]["admin-key"] == key
    assert key not in json.dumps(cluster.applied), "the manifests name the Secret, never the key"


def test_the_smoke_test_waits_until_the_service_routes_to_the_new_version() -> None:
    """Behind a Service, a replaced pod may answer a moment after its rollout is done: the wait
    asks for the version itself, so an old pod's answers are waited out, not smoke-tested."""
    asked: list[str] = []

    class OldThenNew(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            new = self.path == "/v2/models/m/versions/4/ready" and len(asked) > 2
            reply_json(self, 200 if new else 400, {})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), OldThenNew)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"127.0.0.1:{server.server_address[1]}"
    try:
        wait_until_answering(url, "the Service", ("m", 4), timeout_s=10)
        assert asked == ["/v2/models/m/versions/4/ready"] * 3
        with pytest.raises(RolloutFailed, match="versions/5/ready"):
            wait_until_answering(url, "the Service", ("m", 5), timeout_s=1)
    finally:
        server.shutdown()
