"""The project's CPU images, built for real (debootstrap base, host wheelhouse, no network
in the build), pushed to the cluster's registry and started on the cluster: the Triton
image, rolled out by the project's own serving manifests with DOGS_CATS_GPUS=0, turns
ready and answers the smoke test through its Service's ClusterIP (kube-proxy's rules);
the training image trains a model in a pod."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.docker import DockerEngine
from cluster.node import Node
from core.constants import ADMIN_KEY_HEADER, MODEL_NAME
from core.settings import Environment, to_arguments
from deploy.rollout import KubernetesApi, smoke_images, smoke_test, start_serving, wait_for_rollout
from harness.cluster import kubectl, project_images, running_cluster, triton_cpu_image
from model_repository.repository import package_model
from pipeline.stack import wait_for
from training.job import TrainingJob
from training.staging import StagingOptions, stage_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_cluster() as node:
        yield node


@pytest.fixture(scope="module")
def engine(node: Node) -> Iterator[DockerEngine]:
    with DockerEngine.for_node(node).started() as engine:
        yield engine


def test_the_cpu_triton_image_serves_the_int8_twin_on_the_cluster(
    node: Node, engine: DockerEngine, trained_model: str, session_images: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "model_repository"
    version = package_model(
        trained_model, str(repository), flavour="python", model_name=MODEL_NAME, max_batch_size=8
    )
    image = triton_cpu_image(engine, node.root / "cache", repository, f"test-v{version.version}")
    assert image.startswith("10.88.0.1:5000/dogs-cats-triton-cpu:")

    from kubernetes import config

    api = KubernetesApi(config.new_client_from_config(str(node.kubeconfig)))
    environment = Environment(platform="kubernetes", namespace="image-test", gpus=0, serving_replicas=1)
    kubectl(node, "delete", "namespace", "image-test", "--ignore-not-found", "--wait=true")
    kubectl(node, "create", "namespace", "image-test")
    smoke_uri = str(session_images / "cat")
    spec = start_serving(api, version, image, smoke_uri, environment)
    assert wait_for_rollout(api, spec.namespace, spec.name, timeout_s=300, poll_s=2).endswith(
        "successfully rolled out"
    )

    cluster_ip = kubectl(
        node, "get", "service", spec.name, "-n", spec.namespace, "-o", "jsonpath={.spec.clusterIP}"
    )
    assert cluster_ip.stdout.startswith("10.96.")
    # Both ways in (tensors and encoded bytes), the served version checked: what the deploy task runs.
    smoke_test(f"{cluster_ip.stdout}:8000", MODEL_NAME, version.version, smoke_images(smoke_uri))
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


def test_the_cpu_training_image_trains_a_model_in_a_pod(
    node: Node, session_images: Path, tmp_path: Path
) -> None:
    image = project_images(node).training
    data = tmp_path / "data"
    stage_dataset(
        str(session_images), str(data / "dataset"), StagingOptions(val_fraction=0.25), cache_dir=tmp_path
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
    assert "validation accuracy" in logs, "its log reaches kubectl logs (the pod operator streams it)"
    assert (data / "model" / "model.onnx").is_file()
    accuracy = json.loads((data / "model" / "metrics.json").read_text())["val_accuracy"]
    logged = re.search(r"validation accuracy ([0-9.]+)%", logs)
    assert logged is not None, logs[-3000:]
    assert 0.0 <= accuracy <= 1.0
    assert f"{accuracy:.2%}" == f"{logged.group(1)}%", "metrics.json holds what the pod reported"
