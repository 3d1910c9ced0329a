"""The project's CPU images, built for real (debootstrap base, host wheelhouse, no network
in the build), pushed to the cluster's registry and started on the cluster: the Triton
image, rolled out by the project's own serving manifests with DOGS_CATS_GPUS=0, turns
ready and answers the smoke test through its Service's ClusterIP (kube-proxy's rules);
the training image trains a model in a pod."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.docker import DockerEngine
from cluster.node import Node
from cluster.platform_setup import install_autoscaling, install_monitoring, kubernetes_environment
from core.constants import ADMIN_KEY_HEADER, MIN_SERVING_IDLE_S, MODEL_NAME
from core.settings import CanaryParams, Environment, safe_name, to_arguments
from deploy.canary import roll_out
from deploy.idle import WakeHold
from deploy.kubernetes import FORCE_ACTIVATION, WAKE_HOLD_PREFIX, ServingSpec
from deploy.rollout import (
    DeploymentFailed,
    KubernetesApi,
    smoke_images,
    smoke_test,
    start_serving,
    wait_for_rollout,
)
from harness.airflow import running_stack, wait_until_finished
from harness.cluster import (
    IMAGE_BUILDING_TIMEOUT_S,
    Hammer,
    kubectl,
    project_images,
    running_cluster,
    triton_cpu_image,
)
from harness.triton_models import make_faulty
from model_repository.repository import RepositoryVersion, package_model
from pipeline.stack import wait_for
from training.job import TrainingJob
from training.staging import StagingOptions, stage_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.timeout(IMAGE_BUILDING_TIMEOUT_S)]
NAMESPACE = "image-test"
BATCH_DAG = "dogs_cats_batch"
HOLD = WakeHold.for_run("test_images", "session", "deploy")


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_cluster() as node:
        yield node


@pytest.fixture(scope="module")
def engine(node: Node) -> Iterator[DockerEngine]:
    with DockerEngine.for_node(node).started() as engine:
        yield engine


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python-flavour model repository the module's Triton images are built from."""
    return tmp_path_factory.mktemp("image") / "model_repository"


def _next_version(trained_model: str, repository: Path, copies: Path) -> RepositoryVersion:
    """The session's model packaged as the repository's next version (from a copy of its folder,
    since a model already packaged keeps its version)."""
    copy = copies / f"model-{len(list(copies.iterdir())) if copies.exists() else 0}"
    shutil.copytree(trained_model, copy)
    return package_model(
        str(copy), str(repository), flavour="python", model_name=MODEL_NAME, max_batch_size=8
    )


@pytest.fixture(scope="module")
def served(
    node: Node,
    engine: DockerEngine,
    trained_model: str,
    repository: Path,
    session_images: Path,
) -> tuple[KubernetesApi, ServingSpec, int]:
    """The CPU Triton image of the session's model, rolled out by the serving manifests with
    one replica; (the API, the spec, the model version)."""
    version = package_model(
        trained_model, str(repository), flavour="python", model_name=MODEL_NAME, max_batch_size=8
    )
    image = triton_cpu_image(engine, node.root / "cache", repository, f"test-v{version.version}")
    assert image.startswith("10.88.0.1:5000/dogs-cats-triton-cpu:")

    from kubernetes import config

    api = KubernetesApi(config.new_client_from_config(str(node.kubeconfig)))
    environment = Environment(platform="kubernetes", namespace=NAMESPACE, gpus=0, serving_replicas=1)
    kubectl(node, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl(node, "create", "namespace", NAMESPACE)
    spec = start_serving(api, version, image, str(session_images / "cat"), environment)
    assert wait_for_rollout(api, spec.namespace, spec.name, timeout_s=300, poll_s=2).endswith(
        "successfully rolled out"
    )
    return api, spec, version.version


def test_the_cpu_triton_image_serves_the_int8_twin_on_the_cluster(
    node: Node, served: tuple[KubernetesApi, ServingSpec, int], session_images: Path
) -> None:
    _, spec, version = served
    smoke_uri = str(session_images / "cat")
    cluster_ip = kubectl(
        node, "get", "service", spec.name, "-n", spec.namespace, "-o", "jsonpath={.spec.clusterIP}"
    )
    assert cluster_ip.stdout.startswith("10.96.")
    # Both ways in (tensors and encoded bytes), the served version checked: what the deploy task runs.
    smoke_test(f"{cluster_ip.stdout}:8000", MODEL_NAME, version, smoke_images(smoke_uri))
    # Triton's control APIs ask for the key in the Secret the deploy task made; inference did not.
    secret = json.loads(
        kubectl(node, "get", "secret", spec.admin_secret, "-n", spec.namespace, "-o", "json").stdout
    )
    key = base64.b64decode(secret["data"]["admin-key"]).decode()
    index = f"http://{cluster_ip.stdout}:8000/v2/repository/index"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(index, method="POST"), timeout=10)
    assert refused.value.code == 403
    with urllib.request.urlopen(
        urllib.request.Request(index, method="POST", headers={ADMIN_KEY_HEADER: key}), timeout=10
    ) as allowed:
        assert allowed.status == 200
    user = kubectl(
        node,
        "get",
        "pods",
        "-n",
        spec.namespace,
        "-o",
        "jsonpath={.items[0].spec.containers[0].securityContext.runAsUser}",
    )
    assert user.stdout == "10001"


def _disruptions_allowed(node: Node, spec: ServingSpec) -> int:
    budget = kubectl(
        node, "get", "pdb", spec.name, "-n", spec.namespace, "-o", "jsonpath={.status.disruptionsAllowed}"
    )
    return int(budget.stdout or 0)


def test_an_eviction_is_allowed_and_costs_no_request_while_another_replica_serves(
    node: Node, served: tuple[KubernetesApi, ServingSpec, int]
) -> None:
    """A drain is never blocked by the budget (one replica may go), and evicting one of two
    replicas through the Eviction API, as `kubectl drain` does, fails no request."""
    api, spec, _ = served
    assert wait_for("the budget to allow one eviction", lambda: _disruptions_allowed(node, spec) == 1, 60)
    kubectl(node, "scale", "deployment", spec.name, "-n", spec.namespace, "--replicas=2")
    wait_for_rollout(api, spec.namespace, spec.name, timeout_s=300, poll_s=2)
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(str(node.kubeconfig)))
    selector = ",".join(f"{key}={value}" for key, value in spec.selector.items())
    [evicted, *_] = [
        pod.metadata.name for pod in core.list_namespaced_pod(spec.namespace, label_selector=selector).items
    ]
    cluster_ip = kubectl(
        node, "get", "service", spec.name, "-n", spec.namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    with Hammer(f"{cluster_ip}:8000") as hammer:
        eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=evicted, namespace=spec.namespace))
        core.create_namespaced_pod_eviction(evicted, spec.namespace, eviction)

        def replaced() -> bool:
            names = {
                p.metadata.name
                for p in core.list_namespaced_pod(spec.namespace, label_selector=selector).items
            }
            ready = api.read_deployment(spec.namespace, spec.name)["status"].get("readyReplicas", 0)
            return evicted not in names and ready == 2

        wait_for("the evicted pod to be replaced", replaced, 300)
        answered_before = hammer.answered
        wait_for("answers after the replacement", lambda: hammer.answered > answered_before + 10, 60)
    assert hammer.failures == [], hammer.failures[:3]
    assert _disruptions_allowed(node, spec) == 1


@pytest.fixture(scope="module")
def prometheus_url(node: Node) -> str:
    return install_monitoring(node)


@pytest.mark.faults
@pytest.mark.parametrize(
    ("fault", "failed_check"), [("failing", "failure ratio"), ("slow", "p99 ms vs stable")]
)
def test_a_canary_that_fails_requests_or_answers_slowly_is_aborted_while_the_stable_pods_serve_on(
    node: Node,
    engine: DockerEngine,
    served: tuple[KubernetesApi, ServingSpec, int],
    repository: Path,
    trained_model: str,
    prometheus_url: str,
    session_images: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fault: str,
    failed_check: str,
) -> None:
    """Both pass the smoke test; the analysis, on Prometheus' figures for the canary's pods
    against the stable ones, aborts them. A client calling the model's Service throughout sees
    failures only while the failing canary serves, and none from the slow one."""
    api, spec, _ = served
    stable_before = api.read_deployment(spec.namespace, spec.name)
    version = _next_version(trained_model, repository, tmp_path_factory.getbasetemp() / "copies")
    make_faulty(repository / MODEL_NAME / str(version.version), fault)
    image = triton_cpu_image(engine, node.root / "cache", repository, f"test-v{version.version}-{fault}")
    environment = Environment(
        platform="kubernetes",
        namespace=NAMESPACE,
        gpus=0,
        serving_replicas=1,
        prometheus_url=prometheus_url,
        rollout_timeout_s=300,
    )
    # One canary pod beside one or two stable ones; a window past the failing model's healthy start.
    params = CanaryParams(canary_share=0.34, canary_window_s=45)
    with Hammer(_service_url(node, spec.name)) as hammer:
        with pytest.raises(DeploymentFailed) as aborted:
            roll_out(
                api, version, image, str(session_images / "cat"), environment, params, hold=HOLD, poll_s=2
            )
        wait_for("the canary's pods to go", lambda: _pods(node, "canary") == 0, 180)
        failed_while_canary = len(hammer.failures)
        answered = hammer.answered
        wait_for("answers from the stable pods alone", lambda: hammer.answered >= answered + 20, 60, 0.2)
    message = str(aborted.value)
    assert f"canary of version {version.version}" in message
    assert "aborted" in message, message
    assert failed_check in message, message
    assert "the stable Deployment is untouched" in message
    stable_after = api.read_deployment(spec.namespace, spec.name)
    assert stable_after["spec"]["template"] == stable_before["spec"]["template"]
    assert stable_after["metadata"]["generation"] == stable_before["metadata"]["generation"]
    assert len(hammer.failures) == failed_while_canary, hammer.failures[failed_while_canary:][:3]
    if fault == "failing":
        assert failed_while_canary > 0, "the canary's failures reached the client"
        assert all("injected" in failure for failure in hammer.failures), hammer.failures[:3]
        assert failed_while_canary < answered, "bounded by the canary's share"
    else:
        assert hammer.failures == [], hammer.failures[:3]


def test_keda_adds_a_replica_under_load_and_removes_it_after(
    node: Node,
    engine: DockerEngine,
    served: tuple[KubernetesApi, ServingSpec, int],
    repository: Path,
    trained_model: str,
    prometheus_url: str,
    session_images: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """KEDA, built here and registered with the aggregation layer, scales the Deployment on the
    queue/compute ratio Prometheus records: six clients at once queue behind a model that takes
    0.4 s an execution (one would not), so a second replica comes; when they stop, it goes
    after the short scale-down window set here. No request fails throughout."""
    install_autoscaling(node)
    api, spec, _ = served
    version = _next_version(trained_model, repository, tmp_path_factory.getbasetemp() / "copies")
    make_faulty(repository / MODEL_NAME / str(version.version), "slow")
    image = triton_cpu_image(engine, node.root / "cache", repository, f"test-v{version.version}-scaled")
    environment = Environment(
        platform="kubernetes",
        namespace=NAMESPACE,
        gpus=0,
        serving_replicas=1,
        serving_max_replicas=2,
        serving_queue_per_compute_target=0.2,
        serving_scale_down_window_s=20,
        prometheus_url=prometheus_url,
        rollout_timeout_s=300,
    )
    params = CanaryParams(canary=False)
    roll_out(api, version, image, str(session_images / "cat"), environment, params, hold=HOLD, poll_s=2)

    def replicas() -> int:
        return _replicas(api, spec)

    wait_for("KEDA to settle at one replica", lambda: replicas() == 1, 180)
    url = _service_url(node, spec.name)
    with contextlib.ExitStack() as clients:
        load = [clients.enter_context(Hammer(url)) for _ in range(6)]
        wait_for("a second replica under load", lambda: replicas() == 2, 300)
        wait_for("both replicas ready", lambda: _ready_replicas(api, spec) == 2, 180)
    wait_for("back to one replica without the load", lambda: replicas() == 1, 300)
    failures = [failure for client in load for failure in client.failures]
    assert failures == [], failures[:3]
    assert sum(client.answered for client in load) > 50
    hpa = json.loads(kubectl(node, "get", "hpa", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    assert [h["metadata"]["name"] for h in hpa] == [f"keda-hpa-{spec.name}"], "KEDA's, and no other"


def test_the_batch_dag_and_a_deploy_wake_a_model_idling_at_zero_and_it_goes_back(
    node: Node,
    served: tuple[KubernetesApi, ServingSpec, int],
    repository: Path,
    prometheus_url: str,
    session_images: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """serving_replicas 0: KEDA takes the Deployment to zero after the idle time. Then
    `dogs_cats_batch`, under the live scheduler, wakes it (its setup task), classifies
    through it and lets it go (its teardown), and it is back at zero; a deploy from zero
    goes direct (no live traffic for a canary), wakes a pod for its smoke test and lets it go.
    No hold is left on the ScaledObject after either."""
    install_autoscaling(node)
    api, spec, served_version = served
    version = RepositoryVersion(str(repository), MODEL_NAME, served_version, "python", 8)
    environment = Environment(
        platform="kubernetes",
        namespace=NAMESPACE,
        gpus=0,
        prometheus_url=prometheus_url,
        serving_replicas=0,
        serving_max_replicas=1,
        serving_idle_s=MIN_SERVING_IDLE_S,
        rollout_timeout_s=300,
    )
    cats = str(session_images / "cat")
    roll_out(api, version, spec.image, cats, environment, CanaryParams(canary=False), hold=HOLD, poll_s=2)
    _wait_until_idle(node, api, spec)

    root = tmp_path_factory.mktemp("idle-batch")
    settings = {
        **kubernetes_environment(node, project_images(node), prometheus_url, namespace=NAMESPACE),
        "DOGS_CATS_SERVING_REPLICAS": "0",
        "DOGS_CATS_SERVING_MAX_REPLICAS": "1",
        "DOGS_CATS_SERVING_IDLE_S": str(MIN_SERVING_IDLE_S),
        "DOGS_CATS_ALLOWED_ROOTS": json.dumps([str(session_images), str(root)]),
    }
    with running_stack(root / "stack", settings) as stack:
        stack.wait_for_dag(BATCH_DAG)
        assert _replicas(api, spec) == 0, "still idle: nothing woke it yet"
        airflow = stack.api()
        run_id = airflow.trigger(BATCH_DAG, {"input": str(session_images), "output": str(root / "out")})
        run = wait_until_finished(airflow, BATCH_DAG, run_id, 900)
        states = {ti["task_id"]: ti["state"] for ti in airflow.task_instances(BATCH_DAG, run_id)}
    assert run["state"] == "success", states
    assert states["wake_serving"] == states["release_serving"] == "success", states
    report = json.loads((root / "out" / safe_name(run_id) / "report.json").read_text())
    assert report["images"] == report["succeeded"] == len(list(session_images.rglob("*.jpg")))
    _wait_until_idle(node, api, spec)

    endpoint, verdict = roll_out(
        api, version, spec.image, cats, environment, CanaryParams(), hold=HOLD, poll_s=2
    )
    assert verdict is None, "no canary beside a Deployment at zero"
    assert endpoint.version == served_version
    assert _holders(node, spec) == {}, "the deploy's hold went after its smoke test"


def _wait_until_idle(node: Node, api: KubernetesApi, spec: ServingSpec) -> None:
    """No hold on the ScaledObject, and KEDA has taken the Deployment to zero pods."""
    assert _holders(node, spec) == {}, "every hold was let go"
    wait_for("KEDA to take the model to zero", lambda: _replicas(api, spec) == 0, 300, 2)
    wait_for("no Triton pod left", lambda: _pods(node, "stable") == 0, 120)


def _holders(node: Node, spec: ServingSpec) -> dict[str, str]:
    """The ScaledObject's force-activation and wake-hold annotations: who keeps it awake."""
    scaled = kubectl(node, "get", "scaledobject", spec.name, "-n", NAMESPACE, "-o", "json").stdout
    annotations = json.loads(scaled)["metadata"].get("annotations") or {}
    return {
        name: value
        for name, value in annotations.items()
        if name == FORCE_ACTIVATION or name.startswith(WAKE_HOLD_PREFIX)
    }


def _replicas(api: KubernetesApi, spec: ServingSpec) -> int:
    return int(api.read_deployment(spec.namespace, spec.name)["spec"].get("replicas") or 0)


def _ready_replicas(api: KubernetesApi, spec: ServingSpec) -> int:
    return int(api.read_deployment(spec.namespace, spec.name).get("status", {}).get("readyReplicas") or 0)


def _service_url(node: Node, name: str) -> str:
    ip = kubectl(node, "get", "service", name, "-n", NAMESPACE, "-o", "jsonpath={.spec.clusterIP}").stdout
    return f"{ip}:8000"


def _pods(node: Node, track: str) -> int:
    """The track's pods, terminating ones included."""
    selector = f"dogs-cats-triton/track={track}"
    return len(
        json.loads(kubectl(node, "get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json").stdout)[
            "items"
        ]
    )


def test_the_cpu_training_image_trains_a_model_in_a_pod(
    node: Node, session_images: Path, tmp_path: Path
) -> None:
    image = project_images(node).training
    data = tmp_path / "data"
    stage_dataset(
        str(session_images),
        str(data / "dataset"),
        StagingOptions(val_fraction=0.25, test_fraction=0.25),
        cache_dir=tmp_path,
    )
    data.chmod(0o777)  # the image runs as uid 10001
    job = TrainingJob(
        model="small",
        dataset_uri="/data/dataset",
        output_uri="/data/model",
        image_size=32,
        epochs=1,
        batch_size=8,
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "train", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "train",
                    "image": image,
                    "args": ["train", *to_arguments(job)],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "hostPath": {"path": str(data), "type": "Directory"}}],
        },
    }
    kubectl(node, "delete", "pod", "train", "--ignore-not-found", "--wait=true")
    kubectl(node, "apply", "-f", "-", stdin=json.dumps(pod))

    def finished() -> str:
        phase = kubectl(node, "get", "pod", "train", "-o", "jsonpath={.status.phase}").stdout
        return phase if phase in ("Succeeded", "Failed") else ""

    phase = wait_for("the training pod to finish", finished, 600)
    logs = kubectl(node, "logs", "train", check=False).stdout
    assert phase == "Succeeded", logs[-3000:]
    assert "test accuracy" in logs, "its log reaches kubectl logs (the pod operator streams it)"
    assert (data / "model" / "model.onnx").is_file()
    accuracy = json.loads((data / "model" / "metrics.json").read_text())["test_accuracy"]
    # The summary line, not the INT8 twin's line before it ("INT8 twin: test accuracy ...").
    logged = re.search(r"test accuracy ([0-9.]+)% \(95% interval", logs)
    assert logged is not None, logs[-3000:]
    assert 0.0 <= accuracy <= 1.0
    assert f"{accuracy:.2%}" == f"{logged.group(1)}%", "metrics.json holds what the pod reported"
