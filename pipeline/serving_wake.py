"""The batch stage's setup and teardown on kubernetes: wake a model idling at zero before the
stage's first request, and let it go back to zero after the last (deploy/idle.py).

`WakeOperator` takes the run's wake hold and waits in the triggerer (a GPU node may have to
come up first) until a pod answers behind the Service; `release_serving` gives the hold up
whatever the stage's outcome, as Airflow runs a teardown after its setup succeeded. With
serving_replicas above zero both only say so.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator, Context, XComArg, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from core.constants import MODEL_NAME
from core.settings import Environment
from deploy.idle import NothingToWake, WakeHold, hold_awake, release_hold
from deploy.rollout import service_endpoint, wait_until_answering
from pipeline.rollout_operator import RolloutTrigger, cluster_api, rolled_out

WAKE_TASK = "wake_serving"
RELEASE_TASK = "release_serving"
PURPOSE = "batch"


def _batch_hold(context: Context) -> WakeHold:
    """One hold per run: the teardown, and a retried setup, name the one the setup took."""
    return WakeHold.for_run(context["dag"].dag_id, context["run_id"], PURPOSE)


class WakeOperator(BaseOperator):
    """Hold the served model awake for this run's batch stage; done once a pod answers."""

    def __init__(self, *, environment: Environment, poll_s: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.environment, self.poll_s = environment, poll_s

    def execute(self, context: Context) -> None:
        environment = self.environment
        try:
            held = hold_awake(cluster_api(environment), environment, _batch_hold(context))
        except NothingToWake as missing:
            raise AirflowFailException(str(missing)) from missing
        if not held:
            self.log.info(
                "%s never idles (serving_replicas %d)", environment.serving_name, environment.serving_replicas
            )
            return
        self.defer(
            trigger=RolloutTrigger(
                namespace=environment.namespace,
                name=environment.serving_name,
                kubernetes_conn_id=environment.kubernetes_conn_id,
                deadline=time.time() + environment.rollout_timeout_s,
                at_least=1,
                poll_s=self.poll_s,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        """Back from the triggerer with a pod available (or not): once the Service routes to it,
        the stage may start; on failure the hold goes, since the teardown will not run."""
        api = cluster_api(self.environment)
        try:
            self.log.info("%s", rolled_out(event))
            wait_until_answering(
                service_endpoint(api, self.environment, MODEL_NAME, 0).url, "the model's Service"
            )
        except Exception:
            release_hold(api, self.environment, _batch_hold(context))
            raise


def keep_serving(environment: Environment, first: XComArg, last: XComArg, after: XComArg | None) -> None:
    """Wake the model before `first` (and after `after`), let it go after `last`."""

    @task(task_id=RELEASE_TASK)
    def release_serving() -> None:
        release_hold(cluster_api(environment), environment, _batch_hold(get_current_context()))

    wake = WakeOperator(task_id=WAKE_TASK, environment=environment).as_setup()
    if after is not None:
        after >> wake
    wake >> first
    last >> release_serving().as_teardown(setups=wake)
