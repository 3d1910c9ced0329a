"""The kubernetes platform on this machine's cluster: its images and the settings Airflow runs with.

What a user of a real cluster configures by hand (DOGS_CATS_* variables, the
Airflow connection, a namespace with its service account, images in a
registry), made here for the single-node cluster: the CPU training image, the
CPU Triton runtime the in-cluster BuildKit builds on, and the rootless BuildKit
image, all in the cluster's registry; the GCS emulator as the bucket.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from cluster.docker import DockerEngine, builder_image, training_cpu_image, triton_cpu_runtime_image
from cluster.keda import (
    EXTERNAL_METRICS_API,
    KEDA_METRICS_SERVER,
    KEDA_NAMESPACE,
    KEDA_OPERATOR,
    keda_manifests,
)
from cluster.node import GCS_ENDPOINT, REGISTRY, ClusterError, Node
from cluster.versions import pinned
from deploy.monitoring import PROMETHEUS_PORT, prometheus_manifests

NAMESPACE = "dogs-cats"
SERVICE_ACCOUNT = "dogs-cats-training"
# The dockerconfigjson Secret the build pod pushes with (Environment.registry_secret's default).
PUSH_SECRET = "registry-push"
MONITORING_NAMESPACE = "dogs-cats-monitoring"
DEMO_BUCKET = "dogs-cats-demo"


@dataclass(frozen=True)
class ClusterImages:
    training: str
    cpu_runtime: str
    builder: str


def build_images(node: Node, engine: DockerEngine, training_tag: str = "latest") -> ClusterImages:
    """Build (or reuse) and push the three images the kubernetes platform's pods run here."""
    cache = node.root / "cache"
    return ClusterImages(
        training=training_cpu_image(engine, cache, training_tag),
        cpu_runtime=triton_cpu_runtime_image(engine, cache),
        builder=builder_image(engine, node.bin),
    )


def prepare_namespace(node: Node, namespace: str = NAMESPACE) -> None:
    """The namespace, the service account the pods run as (Workload Identity's, on GKE) and
    the registry's push Secret (what a GKE user makes for Artifact Registry)."""
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": PUSH_SECRET, "namespace": namespace},
            "stringData": {".dockerconfigjson": node.registry_credentials().docker_config(REGISTRY)},
        },
    ]
    node.apply(objects, f"namespace {namespace}")


def install_monitoring(node: Node, namespace: str = MONITORING_NAMESPACE) -> str:
    """Prometheus in the cluster (deploy/monitoring.py's manifests), its image the binary
    cluster/build.sh built; waits for it to be ready and returns its address (the Service's)."""
    image = node.push_binary("prometheus", pinned("PROMETHEUS_VERSION"))
    node.apply(prometheus_manifests(namespace, image), "Prometheus")
    node.wait_rolled_out(namespace, "prometheus", 180)
    address = node.kubectl(
        "get", "service", "prometheus", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    return f"http://{address}:{PROMETHEUS_PORT}"


def install_autoscaling(node: Node) -> None:
    """KEDA in the cluster (cluster/keda.py), its images the binaries cluster/build.sh built;
    waits until the API server serves external metrics from it."""
    config = node.bin / "keda-config"
    if not config.is_dir():
        raise ClusterError(f"no KEDA in {node.bin}: make cluster builds it (cluster/build.sh)")
    images = {
        deployment: node.push_binary(binary, pinned("KEDA_VERSION"))
        for deployment, binary in ((KEDA_OPERATOR, "keda"), (KEDA_METRICS_SERVER, "keda-adapter"))
    }
    node.apply(keda_manifests(config, images), "KEDA", server_side=True)
    for deployment in (KEDA_OPERATOR, KEDA_METRICS_SERVER):
        node.wait_rolled_out(KEDA_NAMESPACE, deployment, 240)
    served = node.kubectl(
        "wait", "--for=condition=Available", f"apiservice/{EXTERNAL_METRICS_API}", "--timeout=120s"
    )
    if served.returncode != 0:
        raise ClusterError(f"the API server does not serve {EXTERNAL_METRICS_API}: {served.stderr}")


def kubernetes_environment(
    node: Node, images: ClusterImages, prometheus_url: str, namespace: str = NAMESPACE
) -> dict[str, str]:
    """The environment Airflow's components need to run `dogs_cats` on this cluster."""
    connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(node.kubeconfig)}}
    return {
        "DOGS_CATS_PLATFORM": "kubernetes",
        "DOGS_CATS_GPUS": "0",
        "DOGS_CATS_NAMESPACE": namespace,
        "DOGS_CATS_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
        "DOGS_CATS_TRAINING_IMAGE": images.training,
        "DOGS_CATS_BUILDER_IMAGE": images.builder,
        # RootlessKit's uid map is refused on this machine's kernel (newuidmap: EACCES/EPERM).
        "DOGS_CATS_BUILDER_ROOTLESS": "false",
        "DOGS_CATS_CPU_RUNTIME_IMAGE": images.cpu_runtime,
        "DOGS_CATS_REGISTRY": REGISTRY,
        "DOGS_CATS_REGISTRY_PLAIN_HTTP": "true",
        "DOGS_CATS_REGISTRY_SECRET": PUSH_SECRET,
        # One node of two cores: one Triton replica (maxSurge 1 still rolls out with no gap).
        "DOGS_CATS_SERVING_REPLICAS": "1",
        "STORAGE_EMULATOR_HOST": GCS_ENDPOINT,
        "DOGS_CATS_PROMETHEUS_URL": prometheus_url,
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(connection),
    }


def create_bucket(name: str) -> str:
    """A bucket on the cluster's GCS emulator (kept if it exists); returns gs://name."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(
        project="dogs-cats",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": GCS_ENDPOINT},
    )
    if client.lookup_bucket(name) is None:
        client.create_bucket(name)
    return f"gs://{name}"


def env_file_text(environment: dict[str, str]) -> str:
    """KEY='value' lines a shell (or `set -a; . file`) reads back unchanged."""
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(environment.items()))
