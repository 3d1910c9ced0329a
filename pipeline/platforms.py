"""The platform seam: where training runs and where the model is served.

Everything that differs between one machine and a Kubernetes cluster lives
here, behind two task factories the DAG calls without knowing which platform
it got:

* `train_task(plan)`: local, a `python -m training train` process;
  kubernetes, the same command in a GPU pod (KubernetesPodOperator).
* `deploy_task(version, plan)`: local, the bundled tritonserver loads the new
  version while the old one serves; kubernetes, a BuildKit pod builds the
  Triton image, then a Deployment rollout with a smoke test and rollback.
  On kubernetes the long waits (training pod, image build, rollout) are
  deferred to the triggerer instead of holding worker slots.
* `served_endpoint(model_name)`: where the model answers now, for the
  dogs_cats_batch DAG; `serving_now(...)`: the same, or None before the first
  deployment, held awake (kubernetes) while the champion is scored.
* `keep_serving(first, last)`: the batch stage needs the model answering.
  Local: the tritonserver runs while Airflow does; kubernetes: a setup task
  wakes a Deployment idling at zero, and a teardown lets it go back.

Training emits the MODEL asset and deployment the SERVED_MODEL asset, on
either platform.

The platform is chosen once per deployment by DOGS_CATS_PLATFORM. Only the
`pipeline` package and the DAG files import Airflow.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from airflow.sdk import BaseOperator, XComArg, task

from core.errors import ProjectError
from core.settings import Environment, PlatformName, ort_threads_per_instance, to_arguments, training_python
from deploy import Endpoint
from deploy.monitoring import PrometheusApi, prometheus_from_environment, start_local_prometheus
from model_repository.config import Flavour
from model_repository.repository import RepositoryVersion
from pipeline.assets import MODEL, SERVED_MODEL, annotate, annotate_served
from pipeline.plan import RunPlan
from pipeline.rollout_operator import DEPLOY_TASK, RolloutOperator, cluster_api

log = logging.getLogger(__name__)


class Platform(Protocol):
    name: PlatformName
    serving_flavour: Flavour

    def instance_options(self) -> dict[str, int]:
        """Model instances and ONNX Runtime threads for the served config.pbtxt."""
        ...

    def train_task(self, plan: XComArg) -> XComArg | BaseOperator:
        """A task that runs `python -m training train` with the plan's training job."""
        ...

    def deploy_task(self, version: XComArg, plan: XComArg) -> XComArg:
        """Tasks that serve a RepositoryVersion; the last returns its Endpoint."""
        ...

    def served_endpoint(self, model_name: str) -> Endpoint:
        """Where `model_name` answers now, with the version it serves; raises when nothing does."""
        ...

    def serving_now(
        self, model_name: str, dag_id: str, run_id: str
    ) -> AbstractContextManager[Endpoint | None]:
        """Where `model_name` answers now, answering for the block (a model idling at zero is
        held awake for this run); None when nothing serves it yet."""
        ...

    def keep_serving(self, first: XComArg, last: XComArg, after: XComArg | None = None) -> None:
        """Keep the model answering from `first` (which runs after `after`) to `last`."""
        ...

    def start_monitoring(self) -> str | None:
        """Start the Prometheus this machine runs for the served model (when it runs one);
        its address, for the user to open."""
        ...

    def prometheus(self) -> PrometheusApi | None:
        """The Prometheus reading this platform's Triton, when one runs."""
        ...


def resolved(output: XComArg) -> Any:
    """A task's output passed to a TaskFlow task typed with the value it resolves to.

    At parse time it is an XComArg, and Airflow resolves it when the task runs;
    TaskFlow's type hints cannot say so, so the seam says it here, once."""
    return output


class TrainingFailed(ProjectError, RuntimeError):
    """The training process exited non-zero; the message carries its last lines."""


def run_training_process(args: list[str], python: str) -> None:
    """Run training in its own process, streaming its output into the task log.

    A separate process keeps TensorFlow's memory out of the Airflow worker and
    runs exactly the command a pod runs.
    """
    command = [python, "-m", "training", "train", *args]
    log.info("running %s", " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            log.info("%s", line.rstrip())
    if process.returncode != 0:
        raise TrainingFailed(
            f"training exited with code {process.returncode}; last lines:\n" + "\n".join(tail)
        )


class LocalPlatform:
    name: PlatformName = "local"
    serving_flavour: Flavour = "python"

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

    def instance_options(self) -> dict[str, int]:
        """The local server shares this machine's cores among its instances."""
        return {
            "instances": self.environment.triton_instances,
            "ort_threads": ort_threads_per_instance(self.environment),
        }

    def train_task(self, plan: XComArg) -> XComArg:
        python = training_python(self.environment)

        @task(task_id="train", outlets=[MODEL])
        def train(plan: RunPlan) -> None:
            run_training_process(to_arguments(plan.training), python)
            annotate(MODEL, model=plan.model_uri)

        return train(resolved(plan))

    def deploy_task(self, version: XComArg, plan: XComArg) -> XComArg:
        environment = self.environment

        @task(task_id=DEPLOY_TASK, outlets=[SERVED_MODEL])
        def deploy(version: RepositoryVersion) -> Endpoint:
            from deploy.local_triton import deploy_version

            endpoint = deploy_version(version, environment)
            annotate_served(endpoint)
            return endpoint

        return deploy(resolved(version))

    def served_endpoint(self, model_name: str) -> Endpoint:
        from deploy.local_triton import served_endpoint

        return served_endpoint(self.environment, model_name)

    @contextlib.contextmanager
    def serving_now(self, model_name: str, dag_id: str, run_id: str) -> Iterator[Endpoint | None]:
        """The local server serves while Airflow runs: nothing to hold."""
        from deploy.local_triton import TritonError

        try:
            endpoint = self.served_endpoint(model_name)
        except TritonError as nothing:
            log.info("no champion: %s", nothing)
            endpoint = None
        yield endpoint

    def keep_serving(self, first: XComArg, last: XComArg, after: XComArg | None = None) -> None:
        """Nothing to add: the local tritonserver serves while Airflow runs (make up, make stop)."""

    def start_monitoring(self) -> str:
        return start_local_prometheus(self.environment).url

    def prometheus(self) -> PrometheusApi | None:
        local = prometheus_from_environment(self.environment)
        return PrometheusApi(local.url) if local.process().pid() is not None else None


class KubernetesPlatform:
    name: PlatformName = "kubernetes"

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        # GPU nodes: the NGC image's ONNX Runtime backend; CPU nodes: the CPU image's python backend.
        self.serving_flavour: Flavour = "onnxruntime" if environment.gpus else "python"

    def instance_options(self) -> dict[str, int]:
        """One instance on the pod's GPU; the Airflow worker's cores say nothing about that node."""
        return {}

    def train_task(self, plan: XComArg) -> BaseOperator:
        # The cncf.kubernetes provider takes 0.6 s to import: only this platform's DAGs pay it.
        from pipeline.pods import TrainingPodOperator

        return TrainingPodOperator(task_id="train", environment=self.environment, plan=plan, outlets=[MODEL])

    def deploy_task(self, version: XComArg, plan: XComArg) -> XComArg:
        from pipeline.pods import ImageBuildPodOperator

        environment, flavour = self.environment, self.serving_flavour

        # A dict, so Airflow pushes one XCom per key for the pod's templated fields to pull.
        @task(task_id="build_context")
        def build_context(version: RepositoryVersion, plan: RunPlan) -> dict[str, Any]:
            from triton_image.context import upload_build_context

            return upload_build_context(version, plan.images_uri, environment, flavour).to_dict()

        build: Any = build_context(resolved(version), resolved(plan))
        image = ImageBuildPodOperator(
            task_id="build_image",
            environment=environment,
            context_uri=build["context_uri"],
            image_ref=build["image"],
            build_args=build["build_args"],
        )
        # Applies the manifests, waits for the rollout in the triggerer, smoke-tests, undoes on failure.
        deploy = RolloutOperator(
            task_id=DEPLOY_TASK, environment=environment, version=version, image_ref=build["image"], plan=plan
        )
        image >> deploy
        return deploy.output

    def served_endpoint(self, model_name: str) -> Endpoint:
        from deploy.rollout import served_endpoint

        return served_endpoint(cluster_api(self.environment), self.environment, model_name)

    @contextlib.contextmanager
    def serving_now(self, model_name: str, dag_id: str, run_id: str) -> Iterator[Endpoint | None]:
        from deploy.idle import WakeHold, serving_now

        hold = WakeHold.for_run(dag_id, run_id, "champion")
        with serving_now(cluster_api(self.environment), self.environment, model_name, hold) as endpoint:
            yield endpoint

    def keep_serving(self, first: XComArg, last: XComArg, after: XComArg | None = None) -> None:
        from pipeline.serving_wake import keep_serving

        keep_serving(self.environment, first, last, after)

    def start_monitoring(self) -> str | None:
        """Nothing to start here: Prometheus runs in the cluster (DOGS_CATS_PROMETHEUS_URL)."""
        return self.environment.prometheus_url or None

    def prometheus(self) -> PrometheusApi | None:
        return PrometheusApi(self.environment.prometheus_url) if self.environment.prometheus_url else None


def platform_for(environment: Environment) -> Platform:
    platforms: dict[str, type[LocalPlatform] | type[KubernetesPlatform]] = {
        "local": LocalPlatform,
        "kubernetes": KubernetesPlatform,
    }
    return platforms[environment.platform](environment)
