"""The CPU Triton image, built for real (debootstrap base, host wheelhouse, no network in
the build), pushed to the cluster's registry and rolled out by the project's own serving
manifests with DOGS_CATS_GPUS=0: it turns ready and answers the smoke test through its
Service's ClusterIP (kube-proxy's rules)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.docker import DockerEngine, triton_cpu_image
from cluster.node import Node
from core.constants import MODEL_NAME
from core.settings import Environment
from deploy.rollout import KubernetesApi, smoke_images, smoke_test, start_serving, wait_for_rollout
from harness.cluster import kubectl, running_cluster
from model_repository.repository import package_model

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_cluster() as node:
        yield node


@pytest.fixture(scope="module")
def engine(node: Node) -> Iterator[DockerEngine]:
    engine = DockerEngine(node.root / "docker")
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def test_the_cpu_triton_image_serves_the_packaged_model_on_the_cluster(
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
