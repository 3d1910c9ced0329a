"""The single-node cluster from upstream components: it comes up Ready, listens only on
127.0.0.1 and its bridge, its DNS answers for its Services, the Deployment controller rolls
out, updates, undoes and hits progress deadlines as `kubectl rollout` reports, and `down`
leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.dns import CLUSTER_DOMAIN, DNS_IP
from cluster.node import BRIDGE, BRIDGE_IP, REGISTRY, REGISTRY_USER, SERVICE_IP, Node
from cluster.oci_push import RegistryCredentials, push_binary_image
from cluster.versions import pinned
from deploy.rollout import KubernetesApi, RolloutFailed, rollout_progress, undo, wait_for_rollout
from harness.cluster import cluster_chains, kubectl, running_cluster
from harness.sockets import listening_addresses
from pipeline.rollout_operator import RolloutTrigger
from pipeline.stack import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.integration]
NAMESPACE = "rollout-test"


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with running_cluster() as node:
        yield node


@pytest.fixture(scope="module")
def api(node: Node) -> KubernetesApi:
    from kubernetes import config

    return KubernetesApi(config.new_client_from_config(str(node.kubeconfig)))


@pytest.fixture(scope="module")
def images(node: Node) -> dict[str, str]:
    """Two tags of a small image in the local registry, for the node to pull."""
    return {
        tag: push_binary_image(
            REGISTRY, "rollout-test", tag, node.bin / "pause", credentials=node.registry_credentials()
        )
        for tag in ("v1", "v2")
    }


def _deployment(image: str, *, never_ready: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": image}
    if never_ready:  # nothing listens on port 9: the readiness probe never passes
        container["readinessProbe"] = {"tcpSocket": {"port": 9}, "periodSeconds": 2}
    labels = {"app": "rollout-test"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app", "namespace": NAMESPACE},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 20,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def _apply(node: Node, manifest: dict[str, Any]) -> None:
    kubectl(node, "apply", "-f", "-", stdin=json.dumps(manifest))


def _image(api: KubernetesApi) -> str:
    deployment = api.read_deployment(NAMESPACE, "app")
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def test_the_node_is_ready_and_listens_only_on_loopback_and_its_bridge(node: Node) -> None:
    nodes = json.loads(kubectl(node, "get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["dogs-cats-node"]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert kubectl(node, "get", "--raw", "/readyz").stdout == "ok"
    listening = listening_addresses({pid for pid in node.status().values() if pid})
    assert listening, "the components listen somewhere"
    assert listening <= {"127.0.0.1", BRIDGE_IP}, listening


def test_the_cluster_s_dns_answers_for_its_services_and_for_nothing_beyond(
    node: Node, images: dict[str, str]
) -> None:
    """CoreDNS behind the kube-dns Service (reached from the node through kube-proxy's rules)
    resolves a Service's name to its ClusterIP, forwards nothing, and is what pods are told."""
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_IP]

    def answered() -> list[str]:
        """kube-proxy refuses the Service's address (EPERM) until it has synced its endpoints."""
        try:
            answer = resolver.resolve(f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "A", lifetime=5)
        except dns.resolver.NoNameservers:
            return []
        return [record.address for record in answer]

    assert wait_for("the cluster's DNS to answer", answered, 60) == [SERVICE_IP]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(f"missing.default.svc.{CLUSTER_DOMAIN}", "A", lifetime=10)
    with pytest.raises(dns.resolver.NoNameservers):  # no zone for it, and nothing is forwarded
        resolver.resolve("example.com", "A", lifetime=10)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dns-client", "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": images["v1"]}]},
    }
    kubectl(node, "apply", "-f", "-", stdin=json.dumps(pod))
    sandboxes = node.run / "containerd" / "root" / "io.containerd.grpc.v1.cri" / "sandboxes"

    def told() -> list[str]:
        written = [path.read_text() for path in sandboxes.glob("*/resolv.conf")]
        return [text for text in written if f"default.svc.{CLUSTER_DOMAIN}" in text]

    (resolv_conf,) = wait_for("the pod's resolv.conf", told, 60)
    assert f"nameserver {DNS_IP}" in resolv_conf
    kubectl(node, "delete", "pod", "dns-client", "-n", "default", "--wait=false")


def test_kubectl_is_the_one_built_with_the_cluster(node: Node) -> None:
    """Every call goes through cluster/build.sh's kubectl, of the cluster's own release, so a
    machine with no kubectl on PATH (or another release of it) runs the same."""
    versions = json.loads(kubectl(node, "version", "-o", "json").stdout)
    release = pinned("KUBERNETES_VERSION")
    assert versions["clientVersion"]["gitVersion"] == release
    assert versions["serverVersion"]["gitVersion"] == release
    # What the README tells a user to run: `. .cluster/env`, then kubectl.
    shell = subprocess.run(
        ["bash", "-c", f". {node.env_file} && command -v kubectl && echo $KUBECONFIG"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split() == [str(node.bin / "kubectl"), str(node.kubeconfig)]


def _registry_status(method: str, path: str, headers: dict[str, str] | None = None) -> int:
    body = b"" if method in ("POST", "PUT") else None
    request = urllib.request.Request(
        f"http://{REGISTRY}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_the_registry_refuses_whoever_has_no_credentials(node: Node, images: dict[str, str]) -> None:
    """Anonymous (or wrongly credentialed) pushes, pulls and deletes are refused; the node's
    account may push and pull (and the node pulls with it: every pod of these tests)."""
    wrong = RegistryCredentials(REGISTRY_USER, "not-the-password")
    with pytest.raises(urllib.error.HTTPError) as refused:
        push_binary_image(REGISTRY, "intruder", "v1", node.bin / "pause", credentials=wrong)
    assert refused.value.code == 401
    manifest = "/v2/rollout-test/manifests/v1"
    oci = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    assert _registry_status("POST", "/v2/intruder/blobs/uploads/") == 401
    assert _registry_status("GET", manifest, oci) == 401
    assert _registry_status("DELETE", manifest, oci) == 401
    account = {**oci, "Authorization": node.registry_credentials().authorization()}
    assert _registry_status("GET", manifest, account) == 200
    assert _registry_status("GET", "/v2/intruder/tags/list", account) == 404  # nothing was pushed
    assert (node.run / "registry-auth" / "password").stat().st_mode & 0o777 == 0o600
    assert (node.run / "containerd" / "config.toml").stat().st_mode & 0o777 == 0o600


def test_a_deployment_rolls_out_updates_and_undoes_as_kubectl_reports(
    node: Node, api: KubernetesApi, images: dict[str, str]
) -> None:
    # The cluster keeps its data between `up`s: start from an empty namespace.
    kubectl(node, "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl(node, "create", "namespace", NAMESPACE)
    _apply(node, _deployment(images["v1"]))
    status = kubectl(node, "rollout", "status", "deployment/app", "-n", NAMESPACE, "--timeout=180s")
    assert "successfully rolled out" in status.stdout
    done, message = rollout_progress(api.read_deployment(NAMESPACE, "app"))
    assert (done, message) == (True, "deployment app successfully rolled out")

    _apply(node, _deployment(images["v2"]))
    assert (
        wait_for_rollout(api, NAMESPACE, "app", timeout_s=180, poll_s=1)
        == "deployment app successfully rolled out"
    )
    kubectl(node, "rollout", "status", "deployment/app", "-n", NAMESPACE, "--timeout=30s")
    assert _image(api) == images["v2"]
    history = kubectl(node, "rollout", "history", "deployment/app", "-n", NAMESPACE).stdout
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"]

    kubectl(node, "rollout", "undo", "deployment/app", "-n", NAMESPACE)
    kubectl(node, "rollout", "status", "deployment/app", "-n", NAMESPACE, "--timeout=180s")
    assert _image(api) == images["v1"]
    # Our undo, as `kubectl rollout undo` does it: back to the revision before (v2's).
    assert undo(api, NAMESPACE, "app") is not None
    wait_for_rollout(api, NAMESPACE, "app", timeout_s=180, poll_s=1)
    assert _image(api) == images["v2"]


def test_a_pod_that_never_gets_ready_hits_the_progress_deadline(
    node: Node, api: KubernetesApi, images: dict[str, str]
) -> None:
    _apply(node, _deployment(images["v1"], never_ready=True))
    status = kubectl(
        node, "rollout", "status", "deployment/app", "-n", NAMESPACE, "--timeout=180s", check=False
    )
    assert status.returncode != 0
    assert "exceeded its progress deadline" in status.stderr
    with pytest.raises(RolloutFailed, match="exceeded its progress deadline"):
        rollout_progress(api.read_deployment(NAMESPACE, "app"))
    verdict = _trigger_verdict(node)
    assert verdict["status"] == "failed"
    assert "exceeded its progress deadline" in verdict["message"]
    available = api.read_deployment(NAMESPACE, "app")["status"].get("availableReplicas", 0)
    assert available == 2, "maxUnavailable 0: the old pods kept serving"


def test_down_stops_every_process_and_leaves_no_mount_or_bridge(node: Node) -> None:
    pids = {pid for pid in node.status().values() if pid}
    node.down()
    assert not any(node.status().values())
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert node.mounts() == []
    assert cluster_chains() == [], "kube-proxy's, the kubelet's and the CNI plugin's iptables chains are gone"
    assert subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0
    shims = subprocess.run(["pgrep", "-f", f"containerd-shim.*{node.run}"], capture_output=True)
    assert shims.returncode == 1, shims.stdout


def _trigger_verdict(node: Node) -> dict[str, Any]:
    """The first event of RolloutTrigger for the test Deployment, through an Airflow connection
    (from the environment) to this cluster's kubeconfig."""
    connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(node.kubeconfig)}}
    os.environ["AIRFLOW_CONN_KUBERNETES_CLUSTER_TEST"] = json.dumps(connection)
    trigger = RolloutTrigger(
        namespace=NAMESPACE,
        name="app",
        kubernetes_conn_id="kubernetes_cluster_test",
        deadline=time.time() + 180,
        poll_s=1,
    )

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    try:
        return asyncio.run(first())
    finally:
        del os.environ["AIRFLOW_CONN_KUBERNETES_CLUSTER_TEST"]
