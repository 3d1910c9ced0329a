"""A stand-in for the Deployment controller, for fast unit tests of the rollout logic.

It plays the status transitions `kubectl rollout status` reads; what it does not
model (scheduling, probes, real pods) is what the cluster tests exercise.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from deploy.kubernetes import FORCE_ACTIVATION
from deploy.rollout import FIELD_MANAGER

Behaviour = Literal["healthy", "stuck", "deadline"]


class FakeCluster:
    """Plays the Deployment controller's status transitions, one step per read.

    A changed pod template bumps generation and revision and adds a ReplicaSet,
    as the real controller does; then, per `behaviour`, the new pods become
    available (healthy), never do (stuck), or the progress deadline passes (deadline).
    """

    def __init__(self, behaviour: Behaviour = "healthy") -> None:
        self.behaviour = behaviour
        self.applied: list[dict[str, Any]] = []
        self.applied_by_others: list[tuple[str, dict[str, Any]]] = []  # (field manager, manifest)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.deployment: dict[str, Any] | None = None
        self.replica_sets: list[dict[str, Any]] = []
        self.reads_since_change = 0
        self.templates_replaced: list[dict[str, Any]] = []
        self.activation_pending = False
        self.draining = 0  # replaced pods still shutting down, for the next looks

    # ClusterApi
    def apply(self, manifest: dict[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Any object the deploy applies is stored; the first Deployment's (the stable one's)
        rollouts are played. Another field manager's applies (the wake holds) are recorded, and
        a hold wakes a Deployment at zero as KEDA's force-activation does, a few reads later."""
        if field_manager != FIELD_MANAGER:
            self.applied_by_others.append((field_manager, copy.deepcopy(manifest)))
            self.activation_pending = FORCE_ACTIVATION in manifest["metadata"].get("annotations", {})
            return manifest
        self.applied.append(copy.deepcopy(manifest))
        self.objects[manifest["kind"], manifest["metadata"]["name"]] = copy.deepcopy(manifest)
        if manifest["kind"] == "Deployment" and self._plays(manifest["metadata"]["name"]):
            self._set_template(manifest["spec"]["template"], manifest)
        return manifest

    def _plays(self, name: str) -> bool:
        return self.deployment is None or self.deployment["metadata"]["name"] == name

    def exists(self, manifest: dict[str, Any]) -> bool:
        return (manifest["kind"], manifest["metadata"]["name"]) in self.objects

    def delete(self, manifest: dict[str, Any]) -> bool:
        return self.objects.pop((manifest["kind"], manifest["metadata"]["name"]), None) is not None

    def create(self, manifest: dict[str, Any]) -> bool:
        key = manifest["kind"], manifest["metadata"]["name"]
        if key in self.objects:
            return False
        self.objects[key] = copy.deepcopy(manifest)
        return True

    def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        assert self.deployment is not None
        if self.activation_pending and self.reads_since_change >= 3:
            self.activation_pending = False  # KEDA's next poll: from zero to one
            if self.deployment["spec"].get("replicas") == 0:
                self.deployment["spec"]["replicas"] = 1
                self.reads_since_change = 0
        self._advance()
        return copy.deepcopy(self.deployment)

    def find_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.deployment is not None and self._plays(name):
            return self.read_deployment(namespace, name)
        return copy.deepcopy(self.objects.get(("Deployment", name)))

    def list_replica_sets(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        return copy.deepcopy(self.replica_sets)

    def replace_pod_template(self, namespace: str, name: str, template: dict[str, Any]) -> None:
        self.templates_replaced.append(template)
        self.behaviour = "healthy"  # the previous image starts fine
        self._set_template(template)

    def cluster_ip(self, namespace: str, name: str) -> str:
        assert ("Service", name) in self.objects, f"no Service {name} was applied"
        return "127.0.0.1"  # a call that slips past a test's stand-in stays on this machine

    def terminating_pods(self, namespace: str, selector: dict[str, str]) -> int:
        """The replaced pods still shutting down: `draining` of them, one fewer each look."""
        left, self.draining = self.draining, max(0, self.draining - 1)
        return left

    # The controller
    def _set_template(self, template: dict[str, Any], manifest: dict[str, Any] | None = None) -> None:
        if self.deployment is None:
            assert manifest is not None
            self.deployment = copy.deepcopy(manifest)
            self.deployment["metadata"].update(generation=0, uid="uid-1", annotations={})
            self.deployment["status"] = {}
        elif self.deployment["spec"]["template"] == template:
            return  # nothing changed: no new generation, no new revision
        revision = len(self.replica_sets) + 1
        self.deployment["spec"]["template"] = copy.deepcopy(template)
        self.deployment["metadata"]["generation"] += 1
        self.deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = str(revision)
        labelled = copy.deepcopy(template)
        labelled["metadata"]["labels"]["pod-template-hash"] = f"hash{revision}"
        self.replica_sets.append(
            {
                "metadata": {
                    "name": f"rs-{revision}",
                    "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                    "ownerReferences": [{"kind": "Deployment", "uid": "uid-1"}],
                },
                "spec": {"template": labelled},
            }
        )
        self.reads_since_change = 0

    def _advance(self) -> None:
        assert self.deployment is not None
        status, wanted = self.deployment["status"], self.deployment["spec"].get("replicas", 1)
        self.reads_since_change += 1
        step = self.reads_since_change
        status["observedGeneration"] = self.deployment["metadata"]["generation"] if step > 1 else 0
        if step < 2:
            return
        status.update(replicas=wanted + 1, updatedReplicas=wanted, availableReplicas=0, conditions=[])
        if self.behaviour == "healthy" and step >= 3:
            status.update(replicas=wanted, availableReplicas=wanted)
        if self.behaviour == "deadline" and step >= 3:
            status["conditions"] = [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "rs-2" has timed out progressing.',
                }
            ]
