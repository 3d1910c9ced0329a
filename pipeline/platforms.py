"""The platform seam: where training runs and where the model is served.

Everything that differs between one machine and a Kubernetes cluster lives
here, behind two task factories the DAG calls without knowing which platform
it got:

* `train_task(training_args)`: local, a `python -m training train` process;
  kubernetes, the same command in a GPU pod (KubernetesPodOperator).
* `deploy_task(version)`: local, the bundled tritonserver; kubernetes, a
  Deployment + Service (not built yet: see the cluster-path issue).

The platform is chosen once per deployment by DOGS_CATS_PLATFORM. This module
is the only one besides the DAG that imports Airflow.
"""

from __future__ import annotations

import collections
import logging
import subprocess
from typing import Any, Protocol

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import task
from kubernetes.client import models as k8s

from model_repository import Flavour
from pipeline.settings import Environment, PlatformName, training_python

log = logging.getLogger(__name__)


class Platform(Protocol):
    name: PlatformName
    serving_flavour: Flavour

    def train_task(self, training_args: Any) -> Any:
        """A task that runs `python -m training train *training_args`."""
        ...

    def deploy_task(self, version: Any) -> Any:
        """A task that serves a repository version and returns its Endpoint as a dict."""
        ...


class TrainingFailed(RuntimeError):
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

    def train_task(self, training_args: Any) -> Any:
        python = training_python(self.environment)

        @task(task_id="train")
        def train(args: list[str]) -> None:
            run_training_process(args, python)

        return train(training_args)

    def deploy_task(self, version: Any) -> Any:
        environment = self.environment

        @task(task_id="deploy")
        def deploy(version: dict[str, Any]) -> dict[str, Any]:
            from deploy.local_triton import deploy_version
            from model_repository.repository import RepositoryVersion

            return deploy_version(RepositoryVersion(**version), environment).to_dict()

        return deploy(version)


class TrainingPodOperator(KubernetesPodOperator):
    """`python -m training train` in a GPU pod, with defaults learnt the hard way.

    Each default below says why it is there; callers override by keyword.
    """

    def __init__(self, *, environment: Environment, **kwargs: Any) -> None:
        selector_key, _, selector_value = environment.gpu_node_selector.partition("=")
        defaults: dict[str, Any] = {
            "name": "dogs-cats-train",
            "namespace": environment.namespace,
            "kubernetes_conn_id": environment.kubernetes_conn_id,
            "image": environment.training_image,
            "cmds": ["python", "-m", "training", "train"],
            # The GPU is a limit (Kubernetes schedules extended resources by limits);
            # CPU and memory requests keep the input pipeline from being starved.
            "container_resources": k8s.V1ResourceRequirements(
                requests={"cpu": "4", "memory": "16Gi"},
                limits={"nvidia.com/gpu": "1", "memory": "24Gi"},
            ),
            # Land on GPU nodes, and tolerate the taint GKE puts on them.
            "node_selector": {selector_key: selector_value},
            "tolerations": [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
            # A GPU node pool scaled to zero takes minutes to add a node and pull
            # the multi-GB TensorFlow image; the default 120 s would fail the task.
            "startup_timeout_seconds": 1200,
            # Workload Identity: the pod reads and writes the bucket as this account,
            # so no key file is mounted.
            "service_account_name": environment.service_account,
            # Stream the training log into the Airflow task log, and on failure let
            # Kubernetes put the log's tail in the termination message, which the
            # operator includes in the task's error.
            "get_logs": True,
            "termination_message_policy": "FallbackToLogsOnError",
            # Delete the pod when done, but keep its events in the log on failure.
            "on_finish_action": "delete_pod",
            "log_events_on_failure": True,
            # A retried task reattaches to a pod still running instead of starting another.
            "reattach_on_restart": True,
            "labels": {"app.kubernetes.io/name": "dogs-cats", "app.kubernetes.io/component": "training"},
        }
        super().__init__(**{**defaults, **kwargs})


class KubernetesPlatform:
    name: PlatformName = "kubernetes"
    serving_flavour: Flavour = "onnxruntime"

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

    def train_task(self, training_args: Any) -> Any:
        return TrainingPodOperator(task_id="train", environment=self.environment, arguments=training_args)

    def deploy_task(self, version: Any) -> Any:
        @task(task_id="deploy")
        def deploy(version: dict[str, Any]) -> dict[str, Any]:
            raise NotImplementedError(
                "deploying to Kubernetes is not built yet (Triton image, Deployment, rollout): "
                "this run packaged repository version "
                f"{version['version']} at {version['repository_uri']}; use platform 'local' to serve it"
            )

        return deploy(version)


def platform_for(environment: Environment) -> Platform:
    platforms: dict[str, type[LocalPlatform] | type[KubernetesPlatform]] = {
        "local": LocalPlatform,
        "kubernetes": KubernetesPlatform,
    }
    return platforms[environment.platform](environment)
