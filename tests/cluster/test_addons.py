"""The cluster's add-ons as they are applied: CoreDNS's objects against the Kubernetes schemas,
and KEDA's own manifests with this cluster's images (the real ones run in test_images.py)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

from cluster.dns import DNS_IP, dns_manifests
from cluster.keda import CONFIG_FILES, KEDA_METRICS_SERVER, KEDA_OPERATOR, keda_manifests


def test_coredns_is_valid_and_serves_the_kubelet_s_cluster_dns_address() -> None:
    manifests = {manifest["kind"]: manifest for manifest in dns_manifests("registry/coredns:v1@sha256:0")}
    for manifest in manifests.values():
        kubernetes_validate.validate(manifest, "1.33", strict=True)
    assert manifests["Service"]["metadata"]["name"] == "kube-dns"
    assert manifests["Service"]["spec"]["clusterIP"] == DNS_IP
    assert {port["protocol"] for port in manifests["Service"]["spec"]["ports"]} == {"UDP", "TCP"}
    (rule_core, rule_discovery) = manifests["ClusterRole"]["rules"]
    assert set(rule_core["verbs"]) | set(rule_discovery["verbs"]) == {"list", "watch"}, (
        "it reads, never writes"
    )
    assert "forward" not in manifests["ConfigMap"]["data"]["Corefile"], "no name leaves the cluster"


def test_keda_s_own_manifests_run_this_cluster_s_images(tmp_path: Path) -> None:
    """Every file KEDA's config/default names is read, in order, and only the Deployments'
    images and pull policy change."""
    for name in CONFIG_FILES:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = "Deployment" if name in ("manager/manager.yaml", "metrics-server/deployment.yaml") else "Other"
        deployment = {"manager/manager.yaml": KEDA_OPERATOR}.get(name, KEDA_METRICS_SERVER)
        document = {"kind": kind, "metadata": {"name": deployment if kind == "Deployment" else name}}
        if kind == "Deployment":
            container = {"name": "c", "image": "ghcr.io/kedacore/keda:latest", "imagePullPolicy": "Always"}
            document["spec"] = {"template": {"spec": {"containers": [container]}}}
        path.write_text("---\n" + yaml.safe_dump(document) + "---\n")
    images = {
        KEDA_OPERATOR: "registry/keda:v2.21.0@sha256:1",
        KEDA_METRICS_SERVER: "registry/keda-adapter@sha256:2",
    }
    manifests = keda_manifests(tmp_path, images)
    assert len(manifests) == len(CONFIG_FILES), "empty documents are skipped"
    deployments = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Deployment"}
    for name, image in images.items():
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert (container["image"], container["imagePullPolicy"]) == (image, "IfNotPresent")
    assert next(m["metadata"]["name"] for m in manifests if m["kind"] == "Other") == "general/namespace.yaml"
