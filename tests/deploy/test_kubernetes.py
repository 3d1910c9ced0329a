"""The serving manifests, validated against the real Kubernetes schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest
from pydantic import ValidationError

from core.settings import Environment
from deploy.kubernetes import ServingSpec, canary_manifests, serving_manifests


def _spec(**overrides: int) -> ServingSpec:
    environment = Environment(
        platform="kubernetes",
        namespace="ml",
        prometheus_url="http://prometheus.monitoring:9090",
        **overrides,  # type: ignore[arg-type]
    )
    return ServingSpec.from_environment(
        environment, image="registry.example/dogs-cats-triton:v3-abc", model_name="dogs_cats", model_version=3
    )


def _by_kind(manifests: list[dict]) -> dict[str, dict]:
    return {manifest["kind"]: manifest for manifest in manifests}


@pytest.mark.parametrize("max_replicas", [0, 6])
def test_every_manifest_is_valid_against_the_kubernetes_schema(max_replicas: int) -> None:
    for manifest in serving_manifests(_spec(serving_max_replicas=max_replicas)):
        if manifest["kind"] != "ScaledObject":  # KEDA's CRD: the cluster test applies it for real
            kubernetes_validate.validate(manifest, "1.33", strict=True)


def test_deployment_serves_the_image_on_a_gpu_with_triton_s_health_probes() -> None:
    deployment = _by_kind(serving_manifests(_spec()))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/dogs-cats-triton:v3-abc"
    assert {port["containerPort"] for port in container["ports"]} == {8000, 8001, 8002}
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # A terminating pod keeps serving until the Service has stopped sending it connections.
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 10}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"] == Environment().triton_pod_gpu.resources(gpus=1)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    shm = next(volume for volume in pod["volumes"] if volume["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["template"]["metadata"]["labels"]["dogs-cats-triton/model-version"] == "3"
    change_cause = deployment["metadata"]["annotations"]["kubernetes.io/change-cause"]
    assert change_cause.startswith("dogs_cats version 3 (")


@pytest.mark.security
def test_server_runs_as_non_root_without_privilege_escalation() -> None:
    pod = _by_kind(serving_manifests(_spec()))["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"].get("privileged") is not True
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.security
def test_service_stays_inside_the_cluster_on_triton_s_three_ports() -> None:
    service = _by_kind(serving_manifests(_spec()))["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert {(port["name"], port["port"]) for port in service["spec"]["ports"]} == {
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    }


def test_without_gpus_the_deployment_asks_for_none_and_lands_on_any_node() -> None:
    manifests = serving_manifests(_spec(gpus=0))
    pod = _by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(pod["containers"][0]["resources"])
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.33", strict=True)


def test_selectors_match_the_pods() -> None:
    manifests = _by_kind(serving_manifests(_spec()))
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        manifests["Service"]["spec"]["selector"],
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        manifests["Deployment"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()


def test_a_canary_sits_behind_the_model_s_service_and_its_deployments_do_not_overlap() -> None:
    stable = _by_kind(serving_manifests(_spec()))
    canary = _by_kind(canary_manifests(_spec().canary(1)))
    for manifest in canary.values():
        kubernetes_validate.validate(manifest, "1.33", strict=True)
        assert manifest["metadata"]["name"] == "dogs-cats-triton-canary"
    stable_pods = stable["Deployment"]["spec"]["template"]["metadata"]["labels"]
    canary_pods = canary["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert canary["Deployment"]["spec"]["replicas"] == 1
    assert canary_pods["dogs-cats-triton/track"] == "canary"
    # The model's Service and the disruption budget take both tracks' pods...
    for selector in (
        stable["Service"]["spec"]["selector"],
        stable["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= canary_pods.items()
        assert selector.items() <= stable_pods.items()
    # ...each Deployment and the canary's own Service only their own.
    assert not stable["Deployment"]["spec"]["selector"]["matchLabels"].items() <= canary_pods.items()
    for selector in (
        canary["Deployment"]["spec"]["selector"]["matchLabels"],
        canary["Service"]["spec"]["selector"],
    ):
        assert selector.items() <= canary_pods.items()
        assert not selector.items() <= stable_pods.items()


def test_keda_scales_only_when_asked_and_then_owns_the_replica_count() -> None:
    assert "ScaledObject" not in _by_kind(serving_manifests(_spec()))
    manifests = _by_kind(serving_manifests(_spec(serving_max_replicas=6)))
    scaled = manifests["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {"name": "dogs-cats-triton"}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 6)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "Value", "a ratio, not a per-pod quantity"
    assert trigger["metadata"]["serverAddress"] == "http://prometheus.monitoring:9090"
    assert trigger["metadata"]["query"] == (
        "max((model_version_track:nv_inference_queue_per_compute:ratio_rate1m"
        '{namespace="ml", model="dogs_cats"} >= 0)'
        ' and on(namespace, track) (up{job="triton"} == 1)) or vector(0)'
    )
    assert trigger["metadata"]["threshold"] == "1.0"
    assert "replicas" not in manifests["Deployment"]["spec"]


def test_autoscaling_needs_prometheus() -> None:
    with pytest.raises(ValidationError, match="set DOGS_CATS_PROMETHEUS_URL"):
        Environment(platform="kubernetes", serving_max_replicas=4, prometheus_url="")


def test_manifests_are_the_same_on_every_call() -> None:
    """Server-side apply of the same manifests is a no-op: a retried deploy changes nothing."""
    assert serving_manifests(_spec()) == serving_manifests(_spec())


@pytest.mark.security
def test_triton_pods_take_their_admin_key_from_the_secret() -> None:
    (container,) = _by_kind(serving_manifests(_spec()))["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["env"] == [
        {
            "name": "TRITON_ADMIN_KEY",
            "valueFrom": {"secretKeyRef": {"name": "dogs-cats-triton-admin", "key": "admin-key"}},
        }
    ]
