"""Pod operators for the cluster path, with defaults learnt the hard way.

Each default says why it is there; callers override by keyword. Both are the
real KubernetesPodOperator, so the tests build their pods with
`build_pod_request_obj` and validate them against the Kubernetes schemas.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import XComArg
from kubernetes.client import models as k8s

from core.settings import Environment, gpu_node_labels, to_arguments
from pipeline.plan import RunPlan

BUILDKIT_UID = 1000  # the `user` account of moby/buildkit's rootless image
AS_BUILDKIT_USER = {"run_as_user": BUILDKIT_UID, "run_as_group": BUILDKIT_UID}
BUILDKITD_CONFIG = "/workspace/buildkitd.toml"


def _pod_defaults(environment: Environment, component: str) -> dict[str, Any]:
    """What every pod of ours needs, whatever it runs."""
    return {
        "namespace": environment.namespace,
        "kubernetes_conn_id": environment.kubernetes_conn_id,
        # Workload Identity: the pod reads and writes the bucket as this account,
        # so no key file is mounted.
        "service_account_name": environment.service_account,
        # Stream the pod's log into the Airflow task log, and on failure let
        # Kubernetes put the log's tail in the termination message, which the
        # operator includes in the task's error.
        "get_logs": True,
        "termination_message_policy": "FallbackToLogsOnError",
        # Delete the pod when done, but keep its events in the log on failure.
        "on_finish_action": "delete_pod",
        "log_events_on_failure": True,
        # A retried task reattaches to a pod still running instead of starting another.
        "reattach_on_restart": True,
        # Training and image builds run for many minutes: wait in the triggerer, not
        # in a worker slot. Deferred, the log would only be fetched once the pod ends
        # (and lost if the pod is gone by then); every 30 s a worker fetches what is
        # new and defers again, so the log streams into the task log in chunks.
        "deferrable": True,
        "poll_interval": 10,
        "logging_interval": 30,
        "labels": {"app.kubernetes.io/name": "dogs-cats", "app.kubernetes.io/component": component},
    }


def _storage_env(environment: Environment) -> list[k8s.V1EnvVar]:
    """A GCS emulator the tasks use (the cluster's fake-gcs-server) is the pods' bucket too;
    on real GCS nothing is set and Workload Identity supplies credentials."""
    if not environment.storage_emulator_host:
        return []
    return [k8s.V1EnvVar(name="STORAGE_EMULATOR_HOST", value=environment.storage_emulator_host)]


class TrainingPodOperator(KubernetesPodOperator):
    """`python -m training train` in a GPU pod, with defaults learnt the hard way.

    Each default below says why it is there; callers override by keyword.
    `plan` is templated, so it may be the plan task's XCom; the pod's arguments
    are its training job's.
    """

    template_fields = (*KubernetesPodOperator.template_fields, "plan")

    def __init__(self, *, environment: Environment, plan: RunPlan | XComArg, **kwargs: Any) -> None:
        self.plan = plan
        defaults: dict[str, Any] = {
            **_pod_defaults(environment, "training"),
            "name": "dogs-cats-train",
            "image": environment.training_image,
            "cmds": ["python", "-m", "training", "train"],
            "container_resources": k8s.V1ResourceRequirements(
                **environment.pod_size("training").resources(environment.gpus)
            ),
            "env_vars": _storage_env(environment),
            # Land on GPU nodes, and tolerate the taint GKE puts on them (none without GPUs).
            "node_selector": gpu_node_labels(environment),
            "tolerations": [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
            if environment.gpus
            else [],
            # A GPU node pool scaled to zero takes minutes to add a node and pull
            # the multi-GB TensorFlow image; the default 120 s would fail the task.
            "startup_timeout_seconds": 1200,
        }
        super().__init__(**{**defaults, **kwargs})

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        """The arguments come from the plan once templates (or XCom) have been rendered."""
        assert isinstance(self.plan, RunPlan), f"the plan was not rendered: {self.plan!r}"
        self.arguments = to_arguments(self.plan.training)
        return super().build_pod_request_obj(context, dry_run=dry_run)


def _builder_security(environment: Environment) -> k8s.V1SecurityContext:
    if environment.builder_rootless:
        # rootlesskit needs unconfined seccomp and AppArmor to create user
        # namespaces; that, not privileged mode, is all BuildKit asks for.
        return k8s.V1SecurityContext(
            seccomp_profile=k8s.V1SeccompProfile(type="Unconfined"),
            app_armor_profile=k8s.V1AppArmorProfile(type="Unconfined"),
            **AS_BUILDKIT_USER,
        )
    # As root BuildKit mounts its snapshots itself, which takes a privileged container.
    return k8s.V1SecurityContext(privileged=True, run_as_user=0, run_as_group=0)


def _buildkit_state(environment: Environment) -> str:
    """Where buildkitd keeps its snapshots: the rootless user's data folder, or root's."""
    return "/home/user/.local/share/buildkit" if environment.builder_rootless else "/var/lib/buildkit"


class ImageBuildPodOperator(KubernetesPodOperator):
    """Build and push the Triton image with rootless BuildKit (Kaniko is archived).

    An init container (the training image, which already holds this project's
    storage code) fetches the build context from the bucket into a shared
    emptyDir; `buildctl-daemonless.sh` builds it with the flavour's build
    arguments and pushes `image_ref`. `context_uri`, `image_ref` and
    `build_args` are templated, so they may come from XCom.
    """

    template_fields = (*KubernetesPodOperator.template_fields, "context_uri", "image_ref", "build_args")

    def __init__(
        self,
        *,
        environment: Environment,
        context_uri: str,
        image_ref: str,
        build_args: dict[str, str] | XComArg | None = None,
        **kwargs: Any,
    ) -> None:
        self.environment = environment
        self.context_uri = context_uri
        self.image_ref = image_ref
        self.build_args = build_args or {}
        # Rootless BuildKit cannot create the nested process sandbox inside a pod; a plain-HTTP
        # registry (a local one) needs BuildKit's registry config, which the init container writes.
        flags = ["--oci-worker-no-process-sandbox"] if environment.builder_rootless else []
        if environment.registry_plain_http:
            flags.append(f"--config={BUILDKITD_CONFIG}")
        buildkitd_flags = " ".join(flags)
        env_vars = [k8s.V1EnvVar(name="BUILDKITD_FLAGS", value=buildkitd_flags)]
        volumes = [
            k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource()),
            k8s.V1Volume(name="buildkitd", empty_dir=k8s.V1EmptyDirVolumeSource()),
        ]
        volume_mounts = [
            k8s.V1VolumeMount(name="workspace", mount_path="/workspace", read_only=True),
            k8s.V1VolumeMount(name="buildkitd", mount_path=_buildkit_state(environment)),
        ]
        if environment.registry_secret:
            # A dockerconfigjson Secret, mounted where buildctl looks for credentials.
            env_vars.append(k8s.V1EnvVar(name="DOCKER_CONFIG", value="/home/user/.docker"))
            volumes.append(
                k8s.V1Volume(
                    name="registry-credentials",
                    secret=k8s.V1SecretVolumeSource(
                        secret_name=environment.registry_secret,
                        items=[k8s.V1KeyToPath(key=".dockerconfigjson", path="config.json")],
                    ),
                )
            )
            volume_mounts.append(
                k8s.V1VolumeMount(
                    name="registry-credentials", mount_path="/home/user/.docker", read_only=True
                )
            )
        defaults: dict[str, Any] = {
            **_pod_defaults(environment, "image-build"),
            "name": "dogs-cats-build",
            "image": environment.builder_image,
            "cmds": ["buildctl-daemonless.sh"],
            "env_vars": env_vars,
            "container_security_context": _builder_security(environment),
            # The build needs no GPU: gpus picks the NGC or the CPU flavour it builds.
            "container_resources": k8s.V1ResourceRequirements(**environment.pod_size("build").resources()),
            "volumes": volumes,
            "volume_mounts": volume_mounts,
            # Pulling a 10 GB base image on a fresh node takes minutes.
            "startup_timeout_seconds": 900,
            "init_container_logs": True,
        }
        super().__init__(**{**defaults, **kwargs})

    def _build_args(self) -> dict[str, str]:
        assert isinstance(self.build_args, dict), f"build_args not rendered: {self.build_args!r}"
        return self.build_args

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        """Fill in the context, build arguments and image once templates (or XCom) have been rendered."""
        plain_http = self.environment.registry_plain_http
        output = f"type=image,name={self.image_ref},push=true" + (
            ",registry.insecure=true" if plain_http else ""
        )
        self.arguments = [
            "build",
            "--frontend=dockerfile.v0",
            "--local=context=/workspace/context",
            "--local=dockerfile=/workspace/context",
            *(f"--opt=build-arg:{key}={value}" for key, value in sorted(self._build_args().items())),
            f"--output={output}",
        ]
        fetch = 'python -m deploy unpack-context "$CONTEXT_URI" /workspace/context'
        if plain_http:
            registry = self.environment.registry.split("/")[0]
            fetch += f" && printf '[registry.\"%s\"]\\n  http = true\\n' {registry} > {BUILDKITD_CONFIG}"
        self.init_containers = [
            k8s.V1Container(
                name="fetch-context",
                image=self.environment.training_image,
                command=["sh", "-c"],
                args=[fetch],
                env=[
                    k8s.V1EnvVar(name="CONTEXT_URI", value=self.context_uri),
                    *_storage_env(self.environment),
                ],
                security_context=k8s.V1SecurityContext(
                    **AS_BUILDKIT_USER,
                    run_as_non_root=True,
                    allow_privilege_escalation=False,
                ),
                volume_mounts=[k8s.V1VolumeMount(name="workspace", mount_path="/workspace")],
            )
        ]
        return super().build_pod_request_obj(context, dry_run=dry_run)
