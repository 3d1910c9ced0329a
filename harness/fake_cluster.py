"""A stand-in for the Deployment controller, for fast unit tests of the rollout logic.

It plays the status transitions `kubectl rollout status` reads; what it does not
model (scheduling, probes, real pods) is what the cluster tests exercise.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

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
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.deployment: dict[str, Any] | None = None
        self.replica_sets: list[dict[str, Any]] = []
        self.reads_since_change = 0
        self.templates_replaced: list[dict[str, Any]] = []

    # ClusterApi
    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Any object is stored; the first Deployment's (the stable one's) rollouts are played."""
        self.applied.append(copy.deepcopy(manifest))
        self.objects[manifest["kind"], manifest["metadata"]["name"]] = copy.deepcopy(manifest)
        if manifest["kind"] == "Deployment" and self._plays(manifest["metadata"]["name"]):
            self._set_template(manifest["spec"]["template"], manifest)
        return manifest

    def _plays(self, name: str) -> bool:
        return self.deployment is None or self.deployment["metadata"]["name"] == name

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
        return "10.96.0.10"

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
