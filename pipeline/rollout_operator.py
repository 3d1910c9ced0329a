"""The kubernetes deploy task: a canary judged on live metrics, then the stable rollout, each
wait in the triggerer; smoke tests, and an undo on failure.

A rollout takes minutes (pulling a multi-GB Triton image onto a GPU node) and a canary's
window minutes more, so every wait is deferred and the worker's slot is free meanwhile:

1. `execute` applies the canary (deploy/canary.py) and defers to `RolloutTrigger` on it;
2. `canary_ready` smoke-tests it and defers to `CanaryAnalysisTrigger`, which sleeps the
   window and asks Prometheus for the verdict;
3. `canary_judged` aborts (the canary goes, the task fails naming each check) or applies the
   new image to the stable Deployment and defers to `RolloutTrigger` on it;
4. `execute_complete` smoke-tests the Service, undoes the rollout on failure, and retires
   the canary.

With no canary (`canary: false`, or no stable Deployment yet) `execute` goes straight to 3's
stable rollout. With `deferrable=False` it all waits in the worker, as the provider's
operators do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from core.settings import CanaryParams, Environment, options_of
from deploy import Endpoint
from deploy.canary import (
    Verdict,
    act_on,
    canary_answers,
    judge_canary,
    retire_canary,
    roll_out,
    start_canary,
    unjudged,
)
from deploy.idle import WakeHold, hold_awake, release_hold
from deploy.kubernetes import ServingSpec
from deploy.monitoring import PrometheusApi
from deploy.rollout import (
    DeploymentFailed,
    KubernetesApi,
    RolloutFailed,
    finish_serving,
    rollout_progress,
    smoke_test,
    start_serving,
)
from model_repository.repository import RepositoryVersion
from pipeline.assets import SERVED_MODEL, annotate_served
from pipeline.plan import RunPlan


def cluster_api(environment: Environment) -> KubernetesApi:
    """The cluster as Airflow's Kubernetes connection reaches it."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    return KubernetesApi(KubernetesHook(conn_id=environment.kubernetes_conn_id).api_client)


class RolloutTrigger(BaseTrigger):
    """Polls one Deployment until it has rolled out with `at_least` pods available, failed, or
    `deadline` has passed."""

    def __init__(
        self,
        *,
        namespace: str,
        name: str,
        kubernetes_conn_id: str,
        deadline: float,
        at_least: int = 0,
        poll_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.namespace, self.name = namespace, name
        self.kubernetes_conn_id = kubernetes_conn_id
        self.deadline, self.at_least, self.poll_s = deadline, at_least, poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "namespace": self.namespace,
                "name": self.name,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "deadline": self.deadline,
                "at_least": self.at_least,
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
                    done, message = rollout_progress(
                        api_client.sanitize_for_serialization(found), self.at_least
                    )
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


class CanaryAnalysisTrigger(BaseTrigger):
    """Sleeps until `judge_at`, then asks Prometheus for the canary's verdict."""

    def __init__(
        self,
        *,
        prometheus_url: str,
        model_name: str,
        version: int,
        params: dict[str, Any],
        share: float,
        judge_at: float,
    ) -> None:
        super().__init__()
        self.prometheus_url, self.model_name, self.version = prometheus_url, model_name, version
        self.params, self.share, self.judge_at = params, share, judge_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "prometheus_url": self.prometheus_url,
                "model_name": self.model_name,
                "version": self.version,
                "params": self.params,
                "share": self.share,
                "judge_at": self.judge_at,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(max(0.0, self.judge_at - time.time()))
        prometheus, params = PrometheusApi(self.prometheus_url), CanaryParams(**self.params)
        try:
            # The query API is blocking: off the triggerer's event loop.
            verdict = await asyncio.to_thread(
                judge_canary, prometheus, self.model_name, self.version, params, self.share
            )
        except Exception as failure:  # judged by the worker: the canary goes either way
            yield TriggerEvent({"status": "error", "message": f"{self.prometheus_url}: {failure}"})
            return
        yield TriggerEvent({"status": "judged", "verdict": verdict.to_dict()})


DEPLOY_TASK = "deploy"  # on every platform
CANARY_XCOM = "canary"  # the deploy task's verdict on its canary, which the run's report shows


class RolloutOperator(BaseOperator):
    """Serve `version` (in the image `image_ref`) from the cluster's Deployment, through a canary
    where the plan asks for one; returns its Endpoint.

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

    def _params(self) -> CanaryParams:
        return options_of(CanaryParams, self._plan().config)

    def execute(self, context: Context) -> Endpoint | None:
        api, smoke_uri = self._api(), self._plan().smoke_images_uri
        if not self.deferrable:
            with _failed_for_good():
                endpoint, verdict = roll_out(
                    api,
                    self.version,
                    self.image_ref,
                    smoke_uri,
                    self.environment,
                    self._params(),
                    hold=_deploy_hold(context),
                    poll_s=self.poll_s,
                )
            if verdict:
                context["ti"].xcom_push(key=CANARY_XCOM, value=verdict.to_dict())
            return self._served(endpoint)
        with _failed_for_good():
            started = start_canary(
                api, self.version, self.image_ref, smoke_uri, self.environment, self._params()
            )
        if started is None:
            self._roll_out_stable(api, context)
        canary, share = started
        self._defer_rollout(canary, "canary_ready", {"replicas": canary.replicas, "share": share})

    def canary_ready(self, context: Context, event: dict[str, Any], replicas: int, share: float) -> NoReturn:
        """Back from the triggerer with the canary rolled out (or not): smoke-test it, then wait
        out its window in the triggerer."""
        api, canary, params = self._api(), self._spec().canary(replicas), self._params()
        with _failed_for_good():
            canary_answers(api, canary, self._plan().smoke_images_uri, lambda: rolled_out(event), smoke_test)
        self.defer(
            trigger=CanaryAnalysisTrigger(
                prometheus_url=self.environment.prometheus_url,
                model_name=canary.model_name,
                version=canary.model_version,
                params=params.model_dump(),
                share=share,
                judge_at=time.time() + params.canary_window_s,
            ),
            method_name="canary_judged",
            kwargs={"replicas": replicas},
        )

    def canary_judged(self, context: Context, event: dict[str, Any], replicas: int) -> NoReturn:
        """Abort (the canary goes, the task fails naming each check) or promote: the stable
        Deployment rolls to the new image."""
        api, canary = self._api(), self._spec().canary(replicas)
        with _failed_for_good():
            if event["status"] != "judged":
                raise unjudged(api, canary, event["message"])
            verdict = Verdict.from_dict(event["verdict"])
            context["ti"].xcom_push(key=CANARY_XCOM, value=verdict.to_dict())
            act_on(api, canary, verdict)
        self._roll_out_stable(api, context)

    def _roll_out_stable(self, api: KubernetesApi, context: Context) -> NoReturn:
        """Apply the new image to the stable Deployment and wait for its rollout, with a pod
        woken for the smoke test when it idles at zero (execute_complete lets it go)."""
        with _failed_for_good():  # nothing was applied
            spec = start_serving(
                api, self.version, self.image_ref, self._plan().smoke_images_uri, self.environment
            )
        held = hold_awake(api, self.environment, _deploy_hold(context))
        self._defer_rollout(spec, "execute_complete", {}, at_least=int(held))

    def _defer_rollout(
        self, spec: ServingSpec, method_name: str, kwargs: dict[str, Any], at_least: int = 0
    ) -> NoReturn:
        self.defer(
            trigger=RolloutTrigger(
                namespace=spec.namespace,
                name=spec.object_name,
                kubernetes_conn_id=self.environment.kubernetes_conn_id,
                deadline=time.time() + self.environment.rollout_timeout_s,
                at_least=at_least,
                poll_s=self.poll_s,
            ),
            method_name=method_name,
            kwargs=kwargs,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Endpoint:
        """Back from the triggerer with the stable Deployment rolled out (or not): the smoke
        test, an undo on failure, and the canary (if any) and the wake hold let go either way."""
        api, spec = self._api(), self._spec()
        try:
            with _failed_for_good():  # already rolled back
                endpoint = finish_serving(
                    api,
                    spec,
                    self._plan().smoke_images_uri,
                    self.environment,
                    lambda: rolled_out(event),
                    smoke_test,
                )
        finally:
            release_hold(api, self.environment, _deploy_hold(context))
            retire_canary(api, spec.canary(1))
        return self._served(endpoint)

    def _served(self, endpoint: Endpoint) -> Endpoint:
        annotate_served(endpoint, image=self.image_ref)
        return endpoint

    def _plan(self) -> RunPlan:
        assert isinstance(self.plan, RunPlan), f"the plan was not rendered: {self.plan!r}"
        return self.plan


@contextlib.contextmanager
def _failed_for_good() -> Iterator[None]:
    """A DeploymentFailed fails the task with no retry: nothing was applied, or the canary is
    gone or the rollout undone, and a retry would roll the same image out the same way."""
    try:
        yield
    except DeploymentFailed as failed:
        raise AirflowFailException(str(failed)) from failed


def _deploy_hold(context: Context) -> WakeHold:
    """The deploy task's wake hold: one per run, so a retry takes and lets go the same one."""
    return WakeHold.for_run(context["dag"].dag_id, context["run_id"], DEPLOY_TASK)


def rolled_out(event: dict[str, Any]) -> str:
    """The triggerer's verdict on a rollout, as a wait would have returned it."""
    if event["status"] != "success":
        raise RolloutFailed(event["message"])
    return str(event["message"])
