"""The platform seam: the local process runner and the training pod as Kubernetes gets it.

No API server runs here, so the pod is built by the real operator
(`build_pod_request_obj(dry_run=True)`) and validated against the Kubernetes
schemas with kubernetes-validate.
"""

from __future__ import annotations

import sys

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from pipeline.platforms import (
    KubernetesPlatform,
    LocalPlatform,
    TrainingFailed,
    TrainingPodOperator,
    platform_for,
    run_training_process,
)
from pipeline.settings import Environment

ARGS = ["--dataset-uri", "gs://b/datasets/d", "--output-uri", "gs://b/models/r", "--epochs", "3"]


def _pod(gpu_node_selector: str = Environment().gpu_node_selector) -> dict:
    environment = Environment(
        platform="kubernetes",
        namespace="ml",
        training_image="registry/train:1",
        gpu_node_selector=gpu_node_selector,
    )
    operator = TrainingPodOperator(task_id="train", environment=environment, arguments=ARGS)
    pod = operator.build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def test_training_pod_runs_the_training_entrypoint_on_a_gpu() -> None:
    pod = _pod()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry/train:1"
    assert container["command"] == ["python", "-m", "training", "train"]
    assert container["args"] == ARGS
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    assert pod["spec"]["serviceAccountName"] == "dogs-cats-training"
    assert pod["metadata"]["namespace"] == "ml"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "training"


def test_training_pod_is_valid_against_the_kubernetes_schema() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", **_pod()}
    kubernetes_validate.validate(pod, "1.33", strict=True)


def test_schema_validation_catches_a_bad_field() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", **_pod()}
    pod["spec"]["containers"][0]["gpuCount"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.33", strict=True)


def test_node_selector_comes_from_the_environment() -> None:
    pod = _pod(gpu_node_selector="accelerator=a100")
    assert pod["spec"]["nodeSelector"] == {"accelerator": "a100"}


def test_operator_defaults_survive_where_not_overridden() -> None:
    operator = TrainingPodOperator(
        task_id="t", environment=Environment(), arguments=[], startup_timeout_seconds=60
    )
    assert operator.startup_timeout_seconds == 60
    assert operator.get_logs is True
    assert operator.on_finish_action.value == "delete_pod"


def test_platform_is_chosen_by_the_environment() -> None:
    assert isinstance(platform_for(Environment(platform="local")), LocalPlatform)
    chosen = platform_for(Environment(platform="kubernetes"))
    assert isinstance(chosen, KubernetesPlatform)
    assert chosen.serving_flavour == "onnxruntime"


def test_a_failed_training_process_reports_its_last_lines() -> None:
    with pytest.raises(TrainingFailed, match="exited with code 2") as raised:
        run_training_process(["--epochs", "3"], sys.executable)
    assert "the following arguments are required: --dataset-uri, --output-uri" in str(raised.value)
