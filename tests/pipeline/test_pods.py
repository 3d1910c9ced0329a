"""The pods of the cluster path as Kubernetes gets them.

No API server runs here, so each pod is built by the real operator
(`build_pod_request_obj(dry_run=True)`) and validated against the Kubernetes
schemas with kubernetes-validate.
"""

from __future__ import annotations

from typing import Any

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
    assert args[args.index("--fine-tune-epochs") + 1] == "2"  # the pretrained default, resolved
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
    assert operator.logging_interval == 30, "deferred, the log still streams in chunks"
    assert operator.on_finish_action.value == "delete_pod"


def _build_pod(environment: Environment | None = None, **kwargs: Any) -> dict:
    environment = environment or Environment(
        platform="kubernetes", namespace="ml", registry_secret="push-creds"
    )
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
    # The training image holds the project's storage code: gs://, an emulator, or a folder.
    assert fetch["image"] == Environment().training_image
    assert fetch["args"] == ['python -m deploy unpack-context "$CONTEXT_URI" /workspace/context']
    (builder,) = pod["spec"]["containers"]
    assert builder["image"] == Environment().builder_image
    assert builder["image"].endswith("-rootless")
    assert builder["command"] == ["buildctl-daemonless.sh"]
    assert "--output=type=image,name=registry.example/dogs-cats-triton:v3-abc,push=true" in builder["args"]
    assert "--local=context=/workspace/context" in builder["args"]
    # No GPU for the build: the GPU flavour's size, for the ~10 GB NGC base it pulls.
    assert builder["resources"] == Environment().build_pod_gpu.resources()
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


def test_build_pod_on_a_local_cluster_uses_its_registry_emulator_and_cpu_runtime() -> None:
    """`make cluster`'s settings: a plain-HTTP registry without credentials, the GCS emulator,
    rootful BuildKit, the CPU flavour's base image as a build argument."""
    environment = Environment(
        platform="kubernetes",
        registry="10.88.0.1:5000",
        registry_plain_http=True,
        registry_secret="",
        builder_rootless=False,
        storage_emulator_host="http://10.88.0.1:4443",
    )
    operator = ImageBuildPodOperator(
        task_id="build_image",
        environment=environment,
        context_uri="gs://b/c.tar.gz",
        image_ref="10.88.0.1:5000/dogs-cats-triton:v1-d",
        build_args={"RUNTIME_IMAGE": "10.88.0.1:5000/runtime:1"},
    )
    pod = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", **pod}, "1.33", strict=True)
    (fetch,) = pod["spec"]["initContainers"]
    assert {"name": "STORAGE_EMULATOR_HOST", "value": "http://10.88.0.1:4443"} in fetch["env"]
    assert (
        "printf '[registry.\"%s\"]\\n  http = true\\n' 10.88.0.1:5000 > /workspace/buildkitd.toml"
        in fetch["args"][0]
    )
    (builder,) = pod["spec"]["containers"]
    assert builder["securityContext"] == {"privileged": True, "runAsUser": 0, "runAsGroup": 0}
    assert {"name": "BUILDKITD_FLAGS", "value": "--config=/workspace/buildkitd.toml"} in builder["env"]
    assert "--opt=build-arg:RUNTIME_IMAGE=10.88.0.1:5000/runtime:1" in builder["args"]
    assert (
        "--output=type=image,name=10.88.0.1:5000/dogs-cats-triton:v1-d,push=true,registry.insecure=true"
        in builder["args"]
    )
    assert not any(volume["name"] == "registry-credentials" for volume in pod["spec"]["volumes"])
    mounts = {mount["name"]: mount["mountPath"] for mount in builder["volumeMounts"]}
    assert mounts["buildkitd"] == "/var/lib/buildkit"


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


def test_pod_sizes_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pod's size is a typed setting (one per pod and flavour), set as JSON in the environment."""
    monkeypatch.setenv("DOGS_CATS_TRAINING_POD_GPU", '{"cpu": "8", "memory": "32Gi", "memory_limit": "48Gi"}')
    (gpu,) = _pod()["spec"]["containers"]
    assert gpu["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"memory": "48Gi", "nvidia.com/gpu": "1"},
    }
    (cpu,) = _pod(gpus=0)["spec"]["containers"]
    assert cpu["resources"] == Environment().training_pod_cpu.resources()
    monkeypatch.setenv("DOGS_CATS_TRAINING_POD_CPU", '{"cpu": "1", "memory": "2Gi"}')
    with pytest.raises(ValueError, match="memory_limit"):
        Environment()
