"""The pods of the cluster path as Kubernetes gets them.

No API server runs here, so each pod is built by the real operator
(`build_pod_request_obj(dry_run=True)`) and validated against the Kubernetes
schemas with kubernetes-validate.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from core.settings import Environment, RunConfig, to_arguments
from pipeline.plan import make_plan
from pipeline.pods import ImageBuildPodOperator, TrainingPodOperator

PLAN = make_plan(RunConfig(data_bucket="gs://b", platform="kubernetes", epochs=3), "r")


def _pod(gpu_node_selector: str = Environment().gpu_node_selector, gpus: int = 1) -> dict:
    environment = Environment(
        platform="kubernetes",
        namespace="ml",
        training_image="registry/train:1",
        gpu_node_selector=gpu_node_selector,
        gpus=gpus,
    )
    operator = TrainingPodOperator(task_id="train", environment=environment, plan=PLAN)
    pod = operator.build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def test_training_pod_runs_the_training_entrypoint_on_a_gpu() -> None:
    pod = _pod()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry/train:1"
    assert container["command"] == ["python", "-m", "training", "train"]
    assert container["args"] == to_arguments(PLAN.training)
    args = container["args"]
    assert args[args.index("--dataset-uri") + 1] == "gs://b/datasets/cats_vs_dogs"
    assert args[args.index("--epochs") + 1] == "3"
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


def test_without_gpus_the_pod_asks_for_none_and_lands_on_any_node() -> None:
    pod = _pod(gpus=0)
    (container,) = pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert not pod["spec"].get("nodeSelector")
    assert not pod["spec"].get("tolerations")
    kubernetes_validate.validate(pod, "1.33", strict=True)


def test_node_selector_comes_from_the_environment() -> None:
    pod = _pod(gpu_node_selector="accelerator=a100")
    assert pod["spec"]["nodeSelector"] == {"accelerator": "a100"}


def test_operator_defaults_survive_where_not_overridden() -> None:
    operator = TrainingPodOperator(
        task_id="t", environment=Environment(), plan=PLAN, startup_timeout_seconds=60
    )
    assert operator.startup_timeout_seconds == 60
    assert operator.get_logs is True
    assert operator.on_finish_action.value == "delete_pod"


def _build_pod(**kwargs: str) -> dict:
    environment = Environment(platform="kubernetes", namespace="ml", registry_secret="push-creds")
    operator = ImageBuildPodOperator(
        task_id="build_image",
        environment=environment,
        context_uri="gs://b/images/dogs-cats-triton-v3-abc.tar.gz",
        image_ref="registry.example/dogs-cats-triton:v3-abc",
        **kwargs,
    )
    return ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))


def test_build_pod_fetches_the_context_and_pushes_the_tagged_image() -> None:
    pod = _build_pod()
    (fetch,) = pod["spec"]["initContainers"]
    assert {"name": "CONTEXT_URI", "value": "gs://b/images/dogs-cats-triton-v3-abc.tar.gz"} in fetch["env"]
    assert "gcloud storage cp" in fetch["args"][0]
    (builder,) = pod["spec"]["containers"]
    assert builder["image"] == Environment().builder_image
    assert builder["image"].endswith("-rootless")
    assert builder["command"] == ["buildctl-daemonless.sh"]
    assert "--output=type=image,name=registry.example/dogs-cats-triton:v3-abc,push=true" in builder["args"]
    assert "--local=context=/workspace/context" in builder["args"]
    credentials = next(v for v in pod["spec"]["volumes"] if v["name"] == "registry-credentials")
    assert credentials["secret"]["secretName"] == "push-creds"
    assert pod["metadata"]["namespace"] == "ml"


@pytest.mark.security
def test_build_pod_is_rootless_not_privileged() -> None:
    pod = _build_pod()
    (builder,) = pod["spec"]["containers"]
    context = builder["securityContext"]
    assert context["runAsUser"] == 1000
    assert context.get("privileged") is not True
    assert context["seccompProfile"] == {"type": "Unconfined"}  # what rootlesskit needs, nothing more
    assert {"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"} in builder["env"]


def test_build_pod_is_valid_against_the_kubernetes_schema() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", **_build_pod()}
    kubernetes_validate.validate(pod, "1.33", strict=True)


def test_build_pod_takes_its_context_and_image_from_templates() -> None:
    """In the DAG both come from the build_context task's XCom, rendered before the pod is built."""
    operator = ImageBuildPodOperator(
        task_id="build_image",
        environment=Environment(),
        context_uri="{{ params.context }}",
        image_ref="{{ params.image }}",
    )
    operator.render_template_fields({"params": {"context": "gs://b/c.tar.gz", "image": "r/i:v1-d"}})
    pod = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))
    assert pod["spec"]["initContainers"][0]["env"] == [{"name": "CONTEXT_URI", "value": "gs://b/c.tar.gz"}]
    assert "--output=type=image,name=r/i:v1-d,push=true" in pod["spec"]["containers"][0]["args"]
