"""The kubernetes deploy task: apply, wait for the rollout in the triggerer, smoke-test, undo on failure.

A rollout takes minutes (pulling a multi-GB Triton image onto a GPU node), so
the wait is deferred: the worker applies the manifests and frees its slot;
`RolloutTrigger` polls the Deployment from the triggerer, judging it as
`kubectl rollout status` does; the task resumes on a worker to smoke-test the
Service and roll back when anything failed. With `deferrable=False` it waits
in the worker instead, as the provider's operators do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from core.settings import Environment
from deploy import Endpoint
from deploy.kubernetes import ServingSpec
from deploy.rollout import (
    DeploymentFailed,
    KubernetesApi,
    RolloutFailed,
    finish_serving,
    rollout_progress,
    start_serving,
    wait_for_rollout,
)
from model_repository.repository import RepositoryVersion
from pipeline.assets import SERVED_MODEL, annotate
from pipeline.plan import RunPlan


def cluster_api(environment: Environment) -> KubernetesApi:
    """The cluster as Airflow's Kubernetes connection reaches it."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    return KubernetesApi(KubernetesHook(conn_id=environment.kubernetes_conn_id).api_client)


class RolloutTrigger(BaseTrigger):
    """Polls one Deployment until it has rolled out, failed, or `timeout_s` has passed."""

    def __init__(
        self, *, namespace: str, name: str, kubernetes_conn_id: str, deadline: float, poll_s: float = 5.0
    ) -> None:
        super().__init__()
        self.namespace, self.name = namespace, name
        self.kubernetes_conn_id = kubernetes_conn_id
        self.deadline, self.poll_s = deadline, poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "namespace": self.namespace,
                "name": self.name,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "deadline": self.deadline,
                "poll_s": self.poll_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio.client import AppsV1Api

        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)
        message = "not looked at yet"
        async with hook.get_conn() as api_client:
            apps = AppsV1Api(api_client)
            while time.time() < self.deadline:
                found = await apps.read_namespaced_deployment(self.name, self.namespace)
                try:
                    done, message = rollout_progress(api_client.sanitize_for_serialization(found))
                except RolloutFailed as failed:
                    yield TriggerEvent({"status": "failed", "message": str(failed)})
                    return
                if done:
                    yield TriggerEvent({"status": "success", "message": message})
                    return
                self.log.info("%s", message)
                await asyncio.sleep(self.poll_s)
        yield TriggerEvent(
            {"status": "failed", "message": f"deployment {self.name} not rolled out in time: {message}"}
        )


class RolloutOperator(BaseOperator):
    """Serve `version` (in the image `image_ref`) from the cluster's Deployment; returns its Endpoint.

    `version`, `image_ref` and `plan` are templated, so they may be XComArgs.
    """

    template_fields = ("version", "image_ref", "plan")

    def __init__(
        self,
        *,
        environment: Environment,
        version: Any,
        image_ref: Any,
        plan: Any,
        deferrable: bool = True,
        poll_s: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**{"outlets": [SERVED_MODEL], **kwargs})
        self.environment = environment
        self.version, self.image_ref, self.plan = version, image_ref, plan
        self.deferrable, self.poll_s = deferrable, poll_s

    def _api(self) -> KubernetesApi:
        return cluster_api(self.environment)

    def _spec(self) -> ServingSpec:
        version: RepositoryVersion = self.version
        return ServingSpec.from_environment(
            self.environment,
            image=self.image_ref,
            model_name=version.model_name,
            model_version=version.version,
        )

    def execute(self, context: Context) -> Endpoint | None:
        api, plan = self._api(), self._plan()
        spec = start_serving(api, self.version, self.image_ref, plan.smoke_images_uri, self.environment)
        if not self.deferrable:
            timeout_s = self.environment.rollout_timeout_s
            return self._finish(
                api,
                lambda: wait_for_rollout(
                    api, spec.namespace, spec.name, timeout_s=timeout_s, poll_s=self.poll_s
                ),
            )
        self.defer(
            trigger=RolloutTrigger(
                namespace=spec.namespace,
                name=spec.name,
                kubernetes_conn_id=self.environment.kubernetes_conn_id,
                deadline=time.time() + self.environment.rollout_timeout_s,
                poll_s=self.poll_s,
            ),
            method_name="execute_complete",
        )
        return None

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Endpoint:
        """Back from the triggerer: its verdict on the rollout, then the smoke test."""

        def verdict() -> str:
            if event["status"] != "success":
                raise RolloutFailed(event["message"])
            return str(event["message"])

        return self._finish(self._api(), verdict)

    def _finish(self, api: KubernetesApi, rolled_out: Any) -> Endpoint:
        try:
            endpoint = finish_serving(
                api, self._spec(), self._plan().smoke_images_uri, self.environment, rolled_out
            )
        except DeploymentFailed as failed:
            # Already rolled back; a retry would roll the same image out and fail the same way.
            raise AirflowFailException(str(failed)) from failed
        annotate(
            SERVED_MODEL,
            url=endpoint.url,
            model=endpoint.model_name,
            version=endpoint.version,
            image=self.image_ref,
        )
        return endpoint

    def _plan(self) -> RunPlan:
        assert isinstance(self.plan, RunPlan), f"the plan was not rendered: {self.plan!r}"
        return self.plan
