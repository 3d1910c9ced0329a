"""A batch-only model idles at zero (serving_replicas 0): no Triton pod runs between runs.

KEDA scales a Deployment up from zero only on an active trigger, and the queue/compute ratio
cannot turn active while no pod serves. So each task that needs the model answering (the
deploy task's smoke test, a batch run) holds it awake: it applies KEDA's force-activation
annotation as its own field manager (`kubernetes.wake_hold`), waits until a pod answers
behind the Service, and releases the hold when it is done, failed or not. Overlapping
holders share the annotation, and the API server removes it with the last one's release;
KEDA then scales to zero once `serving_idle_s` has passed without load.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from core.errors import ProjectError
from core.settings import Environment
from deploy import Endpoint
from deploy.kubernetes import WAKE_HOLD_PREFIX, deployment_ref, wake_hold, wake_release
from deploy.rollout import FIELD_MANAGER, ClusterApi, served_endpoint, service_endpoint, wait_until_answering

log = logging.getLogger(__name__)


class NothingToWake(ProjectError, RuntimeError):
    """The settings say the model idles at zero, and the cluster has no autoscaled Deployment."""


@dataclass(frozen=True)
class WakeHold:
    """One task's hold, named after its run so that a retry takes the same hold again."""

    holder: str  # the annotation's name after WAKE_HOLD_PREFIX: what `kubectl get -o yaml` lists
    why: str

    @classmethod
    def for_run(cls, dag_id: str, run_id: str, purpose: str) -> WakeHold:
        # Run ids hold characters annotation names may not: a digest, with the run in the value.
        digest = hashlib.sha256(f"{dag_id}/{run_id}".encode()).hexdigest()[:12]
        return cls(holder=f"{purpose}-{digest}", why=f"{purpose} of {dag_id} run {run_id}")

    @property
    def field_manager(self) -> str:
        return f"{FIELD_MANAGER}-wake-{self.holder}"


def hold_awake(api: ClusterApi, environment: Environment, hold: WakeHold) -> bool:
    """Take `hold` when the Deployment may idle at zero; whether it did (False: it never idles)."""
    if environment.serving_replicas:
        return False
    namespace, name = environment.namespace, environment.serving_name
    if not api.exists(wake_release(namespace, name)):
        raise NothingToWake(
            f"serving_replicas is 0 and {namespace} has no ScaledObject {name} to wake: "
            "deploy a model with these settings first (the dogs_cats DAG)"
        )
    api.apply(wake_hold(namespace, name, hold.holder, hold.why), field_manager=hold.field_manager)
    log.info("holding %s awake (%s%s): %s", name, WAKE_HOLD_PREFIX, hold.holder, hold.why)
    return True


def release_hold(api: ClusterApi, environment: Environment, hold: WakeHold) -> None:
    """Give `hold` up; the Deployment idles again once no other holder and no load keep it."""
    if environment.serving_replicas:
        return
    release = wake_release(environment.namespace, environment.serving_name)
    if api.exists(release):
        api.apply(release, field_manager=hold.field_manager)
        log.info(
            "released %s%s: %s goes back to zero after %d s without load",
            WAKE_HOLD_PREFIX,
            hold.holder,
            environment.serving_name,
            environment.serving_idle_s,
        )


@contextlib.contextmanager
def held_awake(api: ClusterApi, environment: Environment, hold: WakeHold) -> Iterator[bool]:
    """`hold_awake` for the length of a block (a wait in this process); yields whether it held."""
    held = hold_awake(api, environment, hold)
    try:
        yield held
    finally:
        release_hold(api, environment, hold)


@contextlib.contextmanager
def serving_now(
    api: ClusterApi, environment: Environment, model_name: str, hold: WakeHold
) -> Iterator[Endpoint | None]:
    """The endpoint serving `model_name` now, held awake and answering for the block; None
    before the first deployment (no Deployment yet)."""
    if not api.exists(deployment_ref(environment.namespace, environment.serving_name)):
        yield None
        return
    with held_awake(api, environment, hold):
        url = service_endpoint(api, environment, model_name, 0).url
        wait_until_answering(url, "the served model", timeout_s=environment.rollout_timeout_s)
        yield served_endpoint(api, environment, model_name)
