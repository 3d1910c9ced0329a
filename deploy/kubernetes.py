"""Cluster path, stage 4: the Kubernetes objects that serve the Triton image.

Plain dicts in kubectl's shape, so what is applied, what the tests validate
against the Kubernetes schemas, and what `kubectl get -o yaml` shows are the
same thing. Each setting that is not obvious says why it is there.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any, Literal

from core.constants import GRPC_PORT, HTTP_PORT, KEDA_POLLING_INTERVAL_S, METRICS_PORT
from core.settings import Environment, gpu_node_labels
from deploy.monitoring import QUEUE_PER_COMPUTE_SERIES, TRACK_LABEL, while_scraped

Track = Literal["stable", "canary"]


@dataclass(frozen=True)
class ServingSpec:
    name: str
    namespace: str
    image: str
    replicas: int
    max_replicas: int  # > replicas: autoscaled
    queue_per_compute_target: float  # what the autoscaler holds the queue/compute ratio to
    scale_down_window_s: int
    idle_s: int  # at replicas 0: how long the last pod outlives the load and the wake holds
    prometheus_url: str  # where the autoscaler reads the ratio
    gpu_node_labels: dict[str, str]
    model_name: str
    model_version: int
    resources: dict[str, dict[str, str]]  # the Triton container's requests and limits
    admin_secret: str  # the Secret holding the key Triton's control APIs ask for
    gpus: int = 1  # 0: a CPU node, the CPU Triton image
    track: Track = "stable"

    @classmethod
    def from_environment(
        cls, environment: Environment, *, image: str, model_name: str, model_version: int
    ) -> ServingSpec:
        return cls(
            name=environment.serving_name,
            namespace=environment.namespace,
            image=image,
            replicas=environment.serving_replicas,
            max_replicas=environment.serving_max_replicas,
            queue_per_compute_target=environment.serving_queue_per_compute_target,
            scale_down_window_s=environment.serving_scale_down_window_s,
            idle_s=environment.serving_idle_s,
            prometheus_url=environment.prometheus_url,
            gpu_node_labels=gpu_node_labels(environment),
            model_name=model_name,
            model_version=model_version,
            resources=environment.pod_size("triton").resources(environment.gpus),
            admin_secret=environment.triton_admin_secret,
            gpus=environment.gpus,
        )

    def canary(self, replicas: int) -> ServingSpec:
        """The same image served by `replicas` canary pods beside the stable Deployment."""
        return replace(self, track="canary", replicas=replicas, max_replicas=0)

    @property
    def autoscaled(self) -> bool:
        """KEDA (a ScaledObject, and the HorizontalPodAutoscaler it makes) owns the replica
        count between the two bounds."""
        return self.max_replicas > self.replicas

    @property
    def idles_at_zero(self) -> bool:
        """No pod runs while nothing asks: KEDA wakes the Deployment for a batch run
        (deploy/idle.py) and scales it back to zero after."""
        return self.replicas == 0

    @property
    def object_name(self) -> str:
        """The Deployment's and its own Service's name: the canary's carry a suffix."""
        return self.name if self.track == "stable" else f"{self.name}-{self.track}"

    @property
    def selector(self) -> dict[str, str]:
        """Every serving pod, stable or canary: the Service and the disruption budget select these."""
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/component": "serving"}

    @property
    def pod_selector(self) -> dict[str, str]:
        """This track's pods alone: what its Deployment owns (Deployments must not overlap)."""
        return {**self.selector, TRACK_LABEL: self.track}

    @property
    def labels(self) -> dict[str, str]:
        """Every object's labels; the pods' too, which Prometheus' scrape keeps by them."""
        return {**self.selector, "app.kubernetes.io/part-of": "dogs-cats-triton"}

    def metadata(self) -> dict[str, Any]:
        return {"name": self.object_name, "namespace": self.namespace, "labels": self.labels}


PRE_STOP_SLEEP_S = 10
# The preStop sleep, then Triton's 30 s exit timeout for in-flight requests, with room to spare.
TERMINATION_GRACE_S = PRE_STOP_SLEEP_S + 50
ADMIN_KEY_SECRET_KEY = "admin-key"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"  # the images' command puts it in Triton's restricted-API flags


def admin_key_secret(spec: ServingSpec) -> dict[str, Any]:
    """The Secret the Triton pods read their admin key from: made once with a random key
    (the deploy task creates it when absent and never overwrites it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {**spec.metadata(), "name": spec.admin_secret},
        "type": "Opaque",
        "stringData": {ADMIN_KEY_SECRET_KEY: secrets.token_urlsafe(32)},
    }


def _http_probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def _gpu_placement(spec: ServingSpec) -> dict[str, Any]:
    """Land on GPU nodes and tolerate their taint; nothing of the kind without GPUs."""
    if not spec.gpus:
        return {}
    return {
        "nodeSelector": spec.gpu_node_labels,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


def deployment(spec: ServingSpec) -> dict[str, Any]:
    change_cause = f"{spec.model_name} version {spec.model_version} ({spec.image})"
    container = {
        "name": "triton",
        "image": spec.image,
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        # Startup covers image pull leftovers, CUDA init and (with the TensorRT switch)
        # the FP16 engine build: up to 10 minutes before liveness may restart it.
        "startupProbe": _http_probe("/v2/health/ready", 10, 60),
        # Ready only when every model is loaded (--strict-readiness), so a rollout
        # never sends traffic to a pod still loading.
        "readinessProbe": _http_probe("/v2/health/ready", 5, 3),
        "livenessProbe": _http_probe("/v2/health/live", 10, 3),
        # Triton stops accepting connections on SIGTERM, but the Service keeps sending new
        # ones to a terminating pod until kube-proxy has dropped it (refused, seen on the
        # cluster test): keep serving a while first. Kubernetes' own sleep, no binary needed.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_S}}},
        # Triton's control APIs (loading models, shared memory, trace and log files) ask for
        # this key; the image's command refuses to start without it.
        "env": [
            {
                "name": ADMIN_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": spec.admin_secret, "key": ADMIN_KEY_SECRET_KEY}},
            }
        ],
        "resources": spec.resources,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        # The python backend passes tensors through /dev/shm; the container
        # runtime's default of 64 MB is too small for batches of images.
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            **spec.metadata(),
            "annotations": {
                "dogs-cats-triton/model-version": str(spec.model_version),
                # What `kubectl rollout history` lists for each revision.
                "kubernetes.io/change-cause": change_cause,
            },
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": spec.pod_selector},
            # Keep `kubectl rollout undo` able to go back several models.
            "revisionHistoryLimit": 10,
            # A rollout that makes no progress for 10 minutes is marked failed
            # (Progressing=False, ProgressDeadlineExceeded); the deploy task then rolls back.
            "progressDeadlineSeconds": 600,
            # Bring a new pod up before taking an old one down: no capacity dip.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": {
                        **spec.labels,
                        **spec.pod_selector,  # its track: Prometheus labels each series with it
                        "dogs-cats-triton/model-version": str(spec.model_version),
                    },
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                    },
                },
                "spec": {
                    # Triton needs no Kubernetes API access.
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    **_gpu_placement(spec),
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                    "containers": [container],
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}],
                },
            },
        },
    }


def service(spec: ServingSpec) -> dict[str, Any]:
    """ClusterIP only: inside the cluster by default; expose it deliberately (Ingress, port-forward).

    The stable spec's Service is the model's: every serving pod, canaries included, so a canary
    takes its replicas' share of the traffic. A canary's own Service reaches its pods alone,
    for its smoke test."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": spec.metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": spec.selector if spec.track == "stable" else spec.pod_selector,
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                for name, port in (("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT))
            ],
        },
    }


def pod_disruption_budget(spec: ServingSpec) -> dict[str, Any]:
    """Drains (node upgrades, the cluster autoscaler) evict one Triton pod at a time, whatever
    the replica count between its bounds: with two or more another serves meanwhile. A floor
    (`minAvailable: 1`) would refuse every eviction of a lone replica, and so every drain of
    its node, until the drain's own timeout."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": spec.metadata(),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": spec.selector}},
    }


def scaled_object(spec: ServingSpec) -> dict[str, Any]:
    """KEDA scales the Deployment on NVIDIA's signal for Triton: the time requests wait in the
    queue per unit of time computing, from Prometheus. It grows before latency does, unlike GPU
    utilisation, and it is a ratio, so the HorizontalPodAutoscaler compares it as a Value
    (replicas x ratio / target), not averaged over the pods."""
    series = f'{QUEUE_PER_COMPUTE_SERIES}{{namespace="{spec.namespace}", model="{spec.model_name}"}}'
    # At zero only a wake hold may scale it up: the last pods' load, still in the rate's
    # window after they have gone, would otherwise wake it as soon as it got there. A pod
    # still scraped in its shutdown passes this clause: MIN_SERVING_IDLE_S covers that.
    ratio = while_scraped(f"{series} >= 0")
    # At zero, the last pod goes this long after the trigger and the last wake hold have.
    idle = {"cooldownPeriod": spec.idle_s} if spec.idles_at_zero else {}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": spec.metadata(),
        "spec": {
            "scaleTargetRef": {"name": spec.name},
            "minReplicaCount": spec.replicas,
            "maxReplicaCount": spec.max_replicas,
            "pollingInterval": KEDA_POLLING_INTERVAL_S,
            **idle,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    # Scale down slowly: new GPU pods take minutes to become ready.
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": spec.scale_down_window_s}}
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "Value",
                    "metadata": {
                        "serverAddress": spec.prometheus_url,
                        # The worst version's ratio; 0 while nothing is asked (NaN) or no pod serves.
                        "query": f"max({ratio}) or vector(0)",
                        "threshold": str(spec.queue_per_compute_target),
                    },
                }
            ],
        },
    }


FORCE_ACTIVATION = "autoscaling.keda.sh/force-activation"
WAKE_HOLD_PREFIX = "wake.dogs-cats-triton/"


def wake_hold(namespace: str, name: str, holder: str, why: str) -> dict[str, Any]:
    """What one holder applies (server-side, as its own field manager) to keep an idle-at-zero
    Deployment awake: KEDA's force-activation, which scales it from zero and keeps it from
    going back while set, and the holder's own annotation saying who holds it and why.

    Holders applying the same value share the field; when one applies `wake_release`, the
    API server removes it only once no other holder owns it, so overlapping runs each hold
    and the last to go lets the Deployment idle."""
    manifest = wake_release(namespace, name)
    manifest["metadata"]["annotations"] = {FORCE_ACTIVATION: "true", f"{WAKE_HOLD_PREFIX}{holder}": why}
    return manifest


def wake_release(namespace: str, name: str) -> dict[str, Any]:
    """A holder's empty apply: it gives up every field it held."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
    }


def deployment_ref(namespace: str, name: str) -> dict[str, Any]:
    """Enough of a Deployment to ask whether it exists."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace}}


def serving_manifests(spec: ServingSpec) -> list[dict[str, Any]]:
    """Everything `deploy` applies, in apply order."""
    served = deployment(spec)
    manifests = [service(spec), pod_disruption_budget(spec), served]
    if spec.autoscaled:
        # KEDA owns the replica count: a count in the applied manifest would reset it on every deploy.
        del served["spec"]["replicas"]
        manifests.append(scaled_object(spec))
    return manifests


def canary_manifests(canary: ServingSpec) -> list[dict[str, Any]]:
    """A canary's own Service and its Deployment; the model's Service already reaches its pods."""
    return [service(canary), deployment(canary)]


def retired_manifests(spec: ServingSpec) -> list[dict[str, Any]]:
    """What an earlier deploy may have left that this spec no longer wants: the ScaledObject
    once autoscaling is turned off (left in place it would keep resizing the Deployment), and
    the HorizontalPodAutoscaler of releases before KEDA, on a metric nobody served."""
    earlier_hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": spec.metadata(),
    }
    return [earlier_hpa] if spec.autoscaled else [earlier_hpa, scaled_object(spec)]
