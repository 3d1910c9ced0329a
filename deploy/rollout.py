"""Cluster path, stage 4: apply, wait like `kubectl rollout status`, smoke-test,
and roll back like `kubectl rollout undo` when any of it fails.

The logic speaks to the API server through `ClusterApi` (five calls, kubectl's
JSON shapes); `KubernetesApi` is the real one over the official client. Tests
drive the logic with a fake that plays the Deployment status transitions of
apps/v1, since no API server runs here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from core import storage
from core.constants import GRPC_PORT, HTTP_PORT
from core.errors import ProjectError
from core.processes import wait_for
from core.settings import Environment
from deploy import Endpoint
from deploy.kubernetes import (
    TERMINATION_GRACE_S,
    ServingSpec,
    admin_key_secret,
    retired_manifests,
    serving_manifests,
)
from model_repository.repository import RepositoryVersion

log = logging.getLogger(__name__)

FIELD_MANAGER = "dogs-cats-triton"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


class RolloutFailed(ProjectError, RuntimeError):
    """The rollout did not complete (stuck, failed, or the smoke test said no)."""


class DeploymentFailed(ProjectError, RuntimeError):
    """The new model is not serving; the message says why and what now serves."""


class ClusterApi(Protocol):
    def apply(self, manifest: dict[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply: create or update the fields `field_manager` owns."""
        ...

    def exists(self, manifest: dict[str, Any]) -> bool:
        """Whether the object `manifest` names is there."""
        ...

    def delete(self, manifest: dict[str, Any]) -> bool:
        """Delete the object `manifest` names; False when there was none."""
        ...

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create the object unless one of its name exists (kept as it is); False then."""
        ...

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]: ...

    def find_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Deployment, or None when there is none of that name."""
        ...

    def list_replica_sets(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]: ...

    def replace_pod_template(self, namespace: str, name: str, template: dict[str, Any]) -> None: ...

    def cluster_ip(self, namespace: str, name: str) -> str:
        """The Service's virtual IP, which kube-proxy routes to its ready pods."""
        ...

    def terminating_pods(self, namespace: str, selector: dict[str, str]) -> int:
        """How many of the pods `selector` matches are shutting down (deleted, not yet gone)."""
        ...


def _plural_path(manifest: dict[str, Any]) -> str:
    """REST path of a namespaced object; every kind applied here pluralises with 's'."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    metadata = manifest["metadata"]
    return f"{prefix}/namespaces/{metadata['namespace']}/{kind.lower()}s/{metadata['name']}"


class KubernetesApi:
    """ClusterApi over the official kubernetes client (an ApiClient from a kubeconfig or the hook)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)

    def apply(self, manifest: dict[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        # What `kubectl apply --server-side --force-conflicts` sends: rerunning it
        # with the same manifest changes nothing.
        response: dict[str, Any] = self.api_client.call_api(
            _plural_path(manifest),
            "PATCH",
            query_params=[("fieldManager", field_manager), ("force", "true")],
            header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            body=manifest,
            response_types_map={200: "object", 201: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
        return response

    def exists(self, manifest: dict[str, Any]) -> bool:
        return self._call_unless_absent(manifest, "GET")

    def delete(self, manifest: dict[str, Any]) -> bool:
        return self._call_unless_absent(manifest, "DELETE")

    def _call_unless_absent(self, manifest: dict[str, Any], method: str) -> bool:
        """`method` on the object `manifest` names; False when there is none (404)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.api_client.call_api(
                _plural_path(manifest),
                method,
                header_params={"Accept": "application/json"},
                response_types_map={200: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create(self, manifest: dict[str, Any]) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api_client.call_api(
                _plural_path(manifest).rsplit("/", 1)[0],
                "POST",
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                body=manifest,
                response_types_map={201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            if exc.status == 409:  # AlreadyExists
                return False
            raise
        return True

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        return dict(self.api_client.sanitize_for_serialization(deployment))

    def find_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.read_deployment(namespace, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_replica_sets(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        found = self.apps.list_namespaced_replica_set(namespace, label_selector=_label_selector(selector))
        return list(self.api_client.sanitize_for_serialization(found)["items"])

    def replace_pod_template(self, namespace: str, name: str, template: dict[str, Any]) -> None:
        # A JSON patch of the template alone, as `kubectl rollout undo` sends.
        self.apps.patch_namespaced_deployment(
            name, namespace, [{"op": "replace", "path": "/spec/template", "value": template}]
        )

    def cluster_ip(self, namespace: str, name: str) -> str:
        from kubernetes import client

        return str(client.CoreV1Api(self.api_client).read_namespaced_service(name, namespace).spec.cluster_ip)

    def terminating_pods(self, namespace: str, selector: dict[str, str]) -> int:
        from kubernetes import client

        pods = client.CoreV1Api(self.api_client).list_namespaced_pod(
            namespace, label_selector=_label_selector(selector)
        )
        return sum(1 for pod in pods.items if pod.metadata.deletion_timestamp is not None)


def _label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def rollout_progress(deployment: dict[str, Any], at_least: int = 0) -> tuple[bool, str]:
    """(done, message) for one look at a Deployment, as `kubectl rollout status` judges it, and
    with `at_least` pods available (1: one woken from zero, which rolls out with none).

    Raises RolloutFailed once the controller has given up (ProgressDeadlineExceeded).
    """
    name = deployment["metadata"]["name"]
    spec, status = deployment["spec"], deployment.get("status") or {}
    if deployment["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return False, f"waiting for the controller to observe {name}'s new spec"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            reason = condition.get("message")
            raise RolloutFailed(f"deployment {name} exceeded its progress deadline: {reason}")
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if updated < wanted:
        return False, f"{updated} of {wanted} new replicas have been updated"
    if status.get("replicas", 0) > updated:
        old = status.get("replicas", 0) - updated
        return False, f"{old} old replicas are pending termination"
    available = status.get("availableReplicas", 0)
    if available < updated:
        return False, f"{available} of {updated} updated replicas are available"
    if available < at_least:
        return False, f"{available} of {at_least} replicas are available: waiting for KEDA to wake {name}"
    return True, f"deployment {name} successfully rolled out"


def wait_for_rollout(
    api: ClusterApi,
    namespace: str,
    name: str,
    *,
    timeout_s: float,
    at_least: int = 0,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    deadline = clock() + timeout_s
    message = "not looked at yet"
    while clock() < deadline:
        done, message = rollout_progress(api.read_deployment(namespace, name), at_least)
        if done:
            return message
        log.info("%s", message)
        sleep(poll_s)
    raise RolloutFailed(f"deployment {name} not rolled out after {timeout_s:.0f} s: {message}")


def undo(api: ClusterApi, namespace: str, name: str) -> int | None:
    """Roll back to the previous revision like `kubectl rollout undo`; None if there is none."""
    deployment = api.read_deployment(namespace, name)
    current = int(deployment["metadata"].get("annotations", {}).get(REVISION_ANNOTATION, 0))
    selector = deployment["spec"]["selector"]["matchLabels"]
    owned = [
        replica_set
        for replica_set in api.list_replica_sets(namespace, selector)
        if any(owner.get("uid") == deployment["metadata"].get("uid") for owner in _owners(replica_set))
    ]
    earlier = [rs for rs in owned if 0 < _revision(rs) < current]
    if not earlier:
        return None
    previous = max(earlier, key=_revision)
    template = json.loads(json.dumps(previous["spec"]["template"]))
    template["metadata"].get("labels", {}).pop("pod-template-hash", None)
    api.replace_pod_template(namespace, name, template)
    log.warning("rolled %s back to revision %d", name, _revision(previous))
    return _revision(previous)


def _owners(replica_set: dict[str, Any]) -> list[dict[str, Any]]:
    return list(replica_set["metadata"].get("ownerReferences") or [])


def _revision(replica_set: dict[str, Any]) -> int:
    return int(replica_set["metadata"].get("annotations", {}).get(REVISION_ANNOTATION, 0))


def apply_all(
    api: ClusterApi, manifests: list[dict[str, Any]], retired: Sequence[dict[str, Any]] = ()
) -> None:
    """Delete what is `retired`, then server-side apply the manifests."""
    for manifest in retired:
        if api.delete(manifest):
            log.info("deleted %s/%s", manifest["kind"], manifest["metadata"]["name"])
    for manifest in manifests:
        api.apply(manifest)
        log.info("applied %s/%s", manifest["kind"], manifest["metadata"]["name"])


def undo_on_failure(api: ClusterApi, namespace: str, name: str, check: Callable[[], str]) -> str:
    """Run `check` (wait, smoke-test); if it raises, undo the rollout and say what serves now."""
    try:
        return check()
    except Exception as failure:
        revision = undo(api, namespace, name)
        now = f"rolled back to revision {revision}" if revision else "no earlier revision to roll back to"
        raise DeploymentFailed(f"{failure} ({now})") from failure


def smoke_test(url: str, model_name: str, version: int, images: list[bytes], timeout_s: float = 30.0) -> None:
    """A few real images through the Service, both ways in: decoded tensors and encoded bytes.

    Passes only when the served model is the version just rolled out and every
    image gets a label.
    """
    from tritonclient.utils import InferenceServerException

    from client.triton import Triton, classify, classify_encoded, model_info
    from core.images import decode_rgb

    with contextlib.suppress(RolloutFailed):  # never: the checks below say what answers instead
        wait_until_answering(url, "the smoke test's", (model_name, version))
    triton = Triton(url, "http", timeout_s)
    try:
        served = triton.served_versions(model_name)
        if str(version) not in served:
            raise RolloutFailed(f"smoke test: {url} serves {model_name} versions {served}, not {version}")
        info = model_info(triton, model_name)
        tensors = classify(triton, info, np.stack([decode_rgb(blob, info.image_size) for blob in images]))
        encoded = classify_encoded(triton, model_name, images)
    except InferenceServerException as exc:
        raise RolloutFailed(f"smoke test against {url} failed: {exc}") from exc
    finally:
        triton.close()
    if len(tensors) != len(images) or len(encoded) != len(images):
        raise RolloutFailed(f"smoke test: {len(images)} images sent, answers were incomplete")
    log.info("smoke test passed: %s", [row[0].label for row in tensors])


def start_serving(
    api: ClusterApi, version: RepositoryVersion, image: str, smoke_images_uri: str, environment: Environment
) -> ServingSpec:
    """Apply the serving manifests for the image holding `version`; the rollout starts.

    Refuses before applying anything when there is nothing to smoke-test with, or when the
    Deployment there selects its pods otherwise (a selector cannot change)."""
    smoke_images(smoke_images_uri)
    spec = ServingSpec.from_environment(
        environment, image=image, model_name=version.model_name, model_version=version.version
    )
    existing = api.find_deployment(spec.namespace, spec.name)
    selects = existing and existing["spec"]["selector"].get("matchLabels")
    if selects and selects != spec.pod_selector:
        raise DeploymentFailed(
            f"deployment {spec.namespace}/{spec.name} selects its pods by {selects}, this version by "
            f"{spec.pod_selector} (the canary's track came in), and a selector cannot change: delete "
            "the Deployment once (its Service stays); nothing was applied"
        )
    if api.create(admin_key_secret(spec)):
        log.info(
            "created Secret %s/%s: the key Triton's control APIs ask for", spec.namespace, spec.admin_secret
        )
    apply_all(api, serving_manifests(spec), retired_manifests(spec))
    return spec


SmokeTest = Callable[[str, str, int, list[bytes]], None]  # (url, model, version, images)


def finish_serving(
    api: ClusterApi,
    spec: ServingSpec,
    smoke_images_uri: str,
    environment: Environment,
    rolled_out: Callable[[], str],
    smoke: SmokeTest = smoke_test,
) -> Endpoint:
    """Once `rolled_out` says so (a wait here, or the triggerer's verdict), `smoke`-test the
    Service; on any failure undo the rollout. Returns the Service's endpoint."""
    endpoint = service_endpoint(api, environment, spec.model_name, spec.model_version)

    def rolled_out_and_answering() -> str:
        message = rolled_out()
        wait_until_replaced_pods_leave(api, spec.namespace, spec.selector)
        smoke(endpoint.url, spec.model_name, spec.model_version, smoke_images(smoke_images_uri))
        return message

    log.info("%s", undo_on_failure(api, spec.namespace, spec.name, rolled_out_and_answering))
    return endpoint


# Past their grace period the kubelet kills the replaced pods; a little more for the API to see it.
REPLACED_PODS_TIMEOUT_S = TERMINATION_GRACE_S + 30.0


def wait_until_replaced_pods_leave(
    api: ClusterApi, namespace: str, selector: dict[str, str], timeout_s: float = REPLACED_PODS_TIMEOUT_S
) -> None:
    """Until no pod the rollout replaced is left behind the Service (`selector`, the Service's).
    A rollout is done once the old pods are deleted, but each serves on through its preStop
    sleep and kube-proxy drops it a moment late: a smoke test of version 4 straight after met
    version 1 in a clean-clone run. Once the pods are gone nothing old can answer. Past the
    deadline the smoke test goes ahead and says what answers."""
    try:
        wait_for(
            f"the replaced pods ({_label_selector(selector)}) in {namespace} to go",
            lambda: api.terminating_pods(namespace, selector) == 0,
            timeout_s,
            interval_s=1.0,
            error=RolloutFailed,
        )
    except RolloutFailed as late:
        log.warning("%s; smoke-testing anyway", late)


# kube-proxy follows a rollout a moment late: it routes a Service to a new pod a while after
# the pod is ready (a refused connection met a canary's smoke test in a clean-clone run).
ROUTED_TIMEOUT_S = 60.0


def wait_until_answering(
    url: str, what: str, model: tuple[str, int] | None = None, timeout_s: float | None = None
) -> None:
    """Until Triton says ready at `url` (host:port), through whatever routes to it; with
    `model` (name, version), until that version is ready there."""
    path = f"/v2/models/{model[0]}/versions/{model[1]}/ready" if model else "/v2/health/ready"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{url}{path}", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:  # refused until routed; URLError and HTTPError are OSErrors too
            return False

    wait_for(f"{what} {url} to answer at {path}", ready, timeout_s or ROUTED_TIMEOUT_S, error=RolloutFailed)


def smoke_images(smoke_images_uri: str, count: int = 4) -> list[bytes]:
    """The first few images under `smoke_images_uri`, read whole."""
    images = [
        storage.read_bytes(uri) for uri in itertools.islice(storage.iter_files(smoke_images_uri), count)
    ]
    if not images:
        raise DeploymentFailed(f"no images under {smoke_images_uri} to smoke-test with; nothing was applied")
    return images


def service_endpoint(api: ClusterApi, environment: Environment, model_name: str, version: int) -> Endpoint:
    """The Service's ClusterIP (reached from inside the cluster or a node, no cluster DNS
    needed), or DOGS_CATS_SERVING_URL (a port-forward)."""
    if environment.serving_url:
        return Endpoint(environment.serving_url, model_name, version)
    host = api.cluster_ip(environment.namespace, environment.serving_name)
    return Endpoint(f"{host}:{HTTP_PORT}", model_name, version, grpc_url=f"{host}:{GRPC_PORT}")


def served_endpoint(api: ClusterApi, environment: Environment, model_name: str) -> Endpoint:
    """The Service's endpoint with the newest version the Deployment serves now."""
    from client.triton import Triton

    endpoint = service_endpoint(api, environment, model_name, 0)
    triton = Triton(endpoint.url, "http", timeout_s=30)
    try:
        version = max(int(served) for served in triton.served_versions(model_name))
    finally:
        triton.close()
    return dataclasses.replace(endpoint, version=version)
