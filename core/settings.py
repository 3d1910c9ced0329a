"""The one typed place for configuration.

Two kinds of settings, kept apart on purpose:

* `RunConfig`: what a user chooses per DAG run (the trigger conf). The DAG's
  Params are generated from this model, and the stage CLIs' arguments from its
  option groups (`StagingParams`, `TrainingParams`), so the trigger form, the
  REST/CLI validation, the CLIs and the code agree on names, types, defaults
  and bounds.
* `Environment`: what an operator sets once per deployment (ports, state
  folder, namespace, images) through `DOGS_CATS_*` environment variables.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Self, TypeGuard, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.cli import refused_settings
from core.constants import GRPC_PORT, HTTP_PORT, KAGGLE_CATS_AND_DOGS_URL, METRICS_PORT, MIN_SERVING_IDLE_S

OptionsT = TypeVar("OptionsT", bound=BaseModel)
PlatformName = Literal["local", "kubernetes"]
PretrainedChoice = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
ModelChoice = Literal[PretrainedChoice, "small", "xception"]
# Each pretrained backbone's blocks, which fine_tune_blocks counts (training.efficientnet builds them).
BACKBONE_BLOCKS: dict[PretrainedChoice, int] = {
    "efficientnet_lite0": 16,
    "efficientnet_lite1": 21,
    "efficientnet_lite2": 21,
}


# What `epochs: 0` gives. A pretrained head: about as many steps as ten epochs on make demo's
# 716 training images (where ten beat five beyond the noise), at most ten epochs, at least one.
HEAD_STEPS = 230
MAX_SIZED_HEAD_EPOCHS = 10
# A model trained from scratch: the default it always had (no sized default was measured).
SCRATCH_EPOCHS = 5
# What an empty `fine_tune_epochs` gives a pretrained backbone. At make demo's size two beat one
# beyond the noise on the whole dataset's validation images (four did no better than two); on the
# whole dataset one to three reached 98.9-99.4% on test, a second not shown to help nor hurt
# (benchmarks/README.md, "Fine-tuning epochs at the demo's size").
PRETRAINED_FINE_TUNE_EPOCHS = 2


def is_pretrained(model: str) -> TypeGuard[PretrainedChoice]:
    return model in BACKBONE_BLOCKS


InferenceProtocol = Literal["http", "grpc"]
Precision = Literal["fp32", "int8"]
ServingPrecision = Literal["auto", "fp32", "int8"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataLocation(_Options):
    """Where a run reads its images from and writes everything to."""

    data_bucket: str = Field(
        min_length=1,
        description="Where everything is written: a local folder or gs://bucket[/prefix].",
    )
    source: str = Field(
        default=KAGGLE_CATS_AND_DOGS_URL,
        min_length=1,
        description="Images laid out class/*.jpg: an http(s) zip, a local folder or a gs:// prefix.",
    )
    dataset_name: str = Field(
        default="cats_vs_dogs",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Name of the staged dataset under {data_bucket}/datasets/.",
    )


class StagingParams(_Options):
    """Stage 1's choices: what `python -m training stage` and the stage_data task take."""

    max_images_per_class: int = Field(
        default=0, ge=0, description="Cap per class for quick runs; 0 keeps every image."
    )
    val_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of images held out for validation (it chooses the epoch)."
    )
    test_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description=(
            "Share of images held out as the test split: never trained on nor used to choose anything, "
            "scored once on the exported model; the quality gate and the batch stage read it."
        ),
    )
    require_jfif: bool = Field(
        default=False,
        description="Drop files without a JFIF header, as the Keras tutorial does for the Kaggle archive.",
    )
    source_sha256: str = Field(
        default="", pattern=r"^([0-9a-fA-F]{64})?$", description="Expected sha256 of an archive source."
    )

    @model_validator(mode="after")
    def _fractions_leave_a_training_share(self) -> Self:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) "
                "must leave a share for training"
            )
        return self


class TrainingParams(_Options):
    """Stage 2's choices: what `python -m training train`, the pod and the train task take."""

    image_size: int = Field(
        default=180, ge=16, le=512, description="Images are resized to image_size x image_size."
    )
    model: ModelChoice = Field(
        default="efficientnet_lite0",
        description=(
            "efficientnet_lite0: an ImageNet-pretrained EfficientNet-Lite0, frozen, with a new head "
            "(98%+ on cats vs dogs in CPU minutes); efficientnet_lite1, efficientnet_lite2: the deeper "
            "(and for lite2 wider) Lite1 and Lite2, at their own resolutions: on a CPU server about 1.5x "
            "and 2x lite0's serving time per image; small: a narrow CNN trained from scratch; "
            "xception: the Keras tutorial's small Xception, from scratch."
        ),
    )
    epochs: int = Field(
        default=0,
        ge=0,
        le=500,
        description=(
            "Training epochs (the new head's, for a pretrained backbone). 0 sizes them from the "
            f"training set: a pretrained backbone's head gets enough for about {HEAD_STEPS} steps, "
            f"1 to {MAX_SIZED_HEAD_EPOCHS} epochs (ten at 500 photos per class, one at thousands); "
            f"a model trained from scratch {SCRATCH_EPOCHS}."
        ),
    )
    batch_size: int = Field(default=32, ge=1, le=1024, description="Training batch size.")
    learning_rate: float = Field(default=1e-3, gt=0, lt=1, description="Adam learning rate.")
    early_stopping_patience: int = Field(
        default=3, ge=1, description="Stop after this many epochs without a better validation loss."
    )
    fine_tune_epochs: int = Field(
        default_factory=lambda chosen: (
            PRETRAINED_FINE_TUNE_EPOCHS if is_pretrained(chosen.get("model", "")) else 0
        ),
        ge=0,
        le=100,
        description=(
            "Pretrained backbones only: after the head, train the backbone's top blocks this many epochs "
            "at fine_tune_learning_rate (BatchNorm stays frozen); 0 keeps the backbone frozen. "
            f"Empty: {PRETRAINED_FINE_TUNE_EPOCHS} for a pretrained backbone, 0 for a model trained "
            "from scratch."
        ),
    )
    fine_tune_learning_rate: float = Field(
        default=1e-4,
        gt=0,
        lt=1,
        description="Adam's peak learning rate while fine-tuning the backbone, falling to 0 along a cosine.",
    )
    fine_tune_blocks: int = Field(
        default=8,
        ge=1,
        le=21,
        description=(
            "How many of the backbone's blocks (16 in lite0, 21 in lite1 and lite2), counted from the "
            "top, fine-tuning trains (with the head convolution): the top ones are the most specific "
            "to ImageNet's classes. In lite0, 8 reach down to the first block at 1/16 resolution (+0.6 "
            "to +0.7 points on the whole cats vs dogs set, against +0.25 for 4)."
        ),
    )
    augmented_copies: int = Field(
        default=1,
        ge=0,
        le=10,
        description=(
            "Randomly flipped and rotated copies of each training image made once, beside the image "
            "itself: each epoch trains on one of them per image. The frozen part of the model runs "
            "once per copy, not once per epoch; 0 trains without augmentation."
        ),
    )
    backbone_size: int = Field(
        default=0,
        ge=0,
        le=512,
        description=(
            "Pretrained backbones only: the size images are resized to inside the model for the "
            "backbone. 0 is the resolution its ImageNet weights were trained at (224 for lite0, 240 for "
            "lite1, 260 for lite2); a larger one sees more of each photo's detail at (size/that)^2 the "
            "compute, in training and in serving alike."
        ),
    )
    int8: bool = Field(
        default=True,
        description=(
            "Also export an INT8 twin of model.onnx (ONNX Runtime static quantization, calibrated on "
            "training images) and score it on the test split beside the FP32 model."
        ),
    )

    @property
    def top_blocks(self) -> int:
        """The backbone's blocks in the model's trainable part: those fine-tuning trains, none
        without it (the whole backbone then runs once per image and view)."""
        return self.fine_tune_blocks if self.fine_tune_epochs else 0

    def head_epochs(self, steps_per_epoch: int) -> int:
        """The epochs the head trains: `epochs`, or when 0, sized from the training set's steps.

        A new head on a frozen backbone learns from its number of steps, not of epochs: on
        make demo's 716 photos (23 steps an epoch) it was still gaining after five epochs; on
        the whole cats vs dogs set one epoch (498 steps) came within 0.2-0.3 points of five on
        validation (benchmarks/README.md, "The DAG's default recipe").
        """
        if self.epochs:
            return self.epochs
        if not is_pretrained(self.model):
            return SCRATCH_EPOCHS
        return min(MAX_SIZED_HEAD_EPOCHS, max(1, math.ceil(HEAD_STEPS / max(steps_per_epoch, 1))))

    @model_validator(mode="after")
    def _backbone_choices_fit_the_model(self) -> Self:
        if 0 < self.backbone_size < 32:
            raise ValueError(f"backbone_size is 0 (the backbone's own) or 32 up, not {self.backbone_size}")
        if not is_pretrained(self.model):
            for name in ("fine_tune_epochs", "backbone_size"):
                if getattr(self, name):
                    raise ValueError(f"{name} needs a pretrained efficientnet_lite model, not {self.model}")
        elif self.fine_tune_blocks > BACKBONE_BLOCKS[self.model]:
            raise ValueError(
                f"fine_tune_blocks is {self.fine_tune_blocks}, "
                f"but {self.model} has {BACKBONE_BLOCKS[self.model]} blocks"
            )
        return self


class BatchParams(_Options):
    """Stage 5's choices, shared by the dogs_cats DAG's batch stage and the dogs_cats_batch DAG."""

    images_per_shard: int = Field(
        default=0,
        ge=0,
        description=(
            "Batch inference runs one mapped task per this many images. 0 sizes the shards from "
            "the input: as many as run at once (4), none under 2,000 images, so a small input is "
            "one task and pays one task's start."
        ),
    )
    inference_protocol: InferenceProtocol = Field(
        default="http", description="KServe v2 protocol the batch client speaks to Triton."
    )
    inference_encoded: bool = Field(
        default=False,
        description="Send file bytes to the dogs_cats_jpeg ensemble (server decodes) instead of tensors.",
    )


class BatchRunConfig(BatchParams):
    """Per-run parameters of the dogs_cats_batch DAG: classify any images with the served model."""

    input: str = Field(
        default="",
        description=(
            "Images to classify: a local folder or gs:// prefix. Defaults to DOGS_CATS_BATCH_INPUT, "
            "the standing input each new deployment re-classifies; a run with none is skipped."
        ),
    )
    output: str = Field(
        default="",
        description="Where predictions.jsonl and the report go, one folder per run; DOGS_CATS_BATCH_OUTPUT.",
    )


class CanaryParams(_Options):
    """How the kubernetes deploy task rolls a new version out: first to a share of the traffic,
    promoted only if Prometheus' figures for that share pass these limits."""

    canary: bool = Field(
        default=True,
        description=(
            "Kubernetes: serve a new version to a share of the traffic first and promote it only if "
            "its live metrics pass; false rolls it out to every replica at once."
        ),
    )
    canary_share: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Share of the stable replicas' traffic the canary takes (set by replica counts).",
    )
    canary_window_s: int = Field(
        default=120, ge=20, description="How long the canary serves before its metrics are judged."
    )
    canary_min_requests: int = Field(
        default=20,
        ge=1,
        description="Fewer canary requests in the window is no evidence: the canary is aborted.",
    )
    canary_max_failure_ratio: float = Field(
        default=0.01, ge=0, le=1, description="Abort above this share of failed canary requests."
    )
    canary_max_p99_ms: float = Field(
        default=1000.0, gt=0, description="Abort when the canary's p99 latency exceeds this."
    )
    canary_max_p99_vs_stable: float = Field(
        default=2.0,
        ge=1,
        description="Abort when the canary's p99 exceeds the stable pods' p99 times this (and by 50 ms).",
    )


# Bases are listed last-first: pydantic orders fields from the last base on, which is
# the order of the trigger form (where, then staging, then training, then the rest).
class RunConfig(CanaryParams, BatchParams, TrainingParams, StagingParams, DataLocation):
    """Per-run parameters; every field becomes a DAG Param of the same name."""

    min_test_accuracy: float = Field(
        default=0.0,
        ge=0,
        description="Quality gate: a model under this test accuracy is not packaged or deployed.",
    )
    champion_tolerance: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description=(
            "Champion and challenger: the new model is deployed only if its accuracy on this run's test "
            "split is lower than the served model's on the same images by no more than this (0.005: half "
            "a point) or one image, whichever is larger."
        ),
    )
    force_deploy: bool = Field(
        default=False,
        description="Deploy the new model even when it scores worse than the served one (still recorded).",
    )
    max_batch_size: int = Field(
        default=32, ge=1, le=256, description="Largest batch Triton accepts for one request."
    )
    serving_precision: ServingPrecision = Field(
        default="auto",
        description=(
            "auto: on a CPU server, the INT8 twin when on the test split it gives FP32's label to 99% of "
            "images and loses at most 0.5 points (or one image), else FP32; a GPU server keeps FP32. "
            "fp32 or int8 force one."
        ),
    )
    tensorrt_fp16: bool = Field(
        default=False,
        description="Kubernetes only: serve through TensorRT in FP16 (built when the server starts).",
    )
    platform: PlatformName = Field(
        default="local",
        description="local: subprocess + local tritonserver; kubernetes: GPU pod + Deployment.",
    )
    inference_input: str = Field(
        default="",
        description="Images to classify after deployment; empty classifies the staged test split.",
    )

    @model_validator(mode="after")
    def _cluster_needs_a_shared_bucket(self) -> RunConfig:
        if self.platform == "kubernetes" and not self.data_bucket.startswith("gs://"):
            raise ValueError(
                f"platform kubernetes needs a gs:// data_bucket that pods can reach, not {self.data_bucket!r}"
            )
        if self.tensorrt_fp16 and self.platform != "kubernetes":
            raise ValueError("tensorrt_fp16 needs the kubernetes platform (a GPU Triton server)")
        return self

    def dataset_uri(self) -> str:
        return join_uri(self.data_bucket, "datasets", self.dataset_name)

    def run_uri(self, area: str, run_id: str) -> str:
        """A per-run folder, e.g. {bucket}/models/<run>; run ids become safe names."""
        return join_uri(self.data_bucket, area, safe_name(run_id))


class PodSize(BaseModel):
    """What the scheduler reserves for a container (requests) and the memory past which it is
    killed (limit). Set one as JSON, e.g. DOGS_CATS_TRAINING_POD_GPU='{"cpu": "8", ...}'."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: str
    memory: str
    memory_limit: str
    ephemeral_storage: str = ""
    ephemeral_storage_limit: str = ""

    def resources(self, gpus: int = 0) -> dict[str, dict[str, str]]:
        """The container's `resources`, in the Kubernetes API's shape. GPUs are a limit:
        Kubernetes schedules extended resources by their limits."""
        requests = {"cpu": self.cpu, "memory": self.memory}
        limits = {"memory": self.memory_limit}
        if self.ephemeral_storage:
            requests["ephemeral-storage"] = self.ephemeral_storage
        if self.ephemeral_storage_limit:
            limits["ephemeral-storage"] = self.ephemeral_storage_limit
        if gpus:
            limits["nvidia.com/gpu"] = str(gpus)
        return {"requests": requests, "limits": limits}


class Environment(BaseSettings):
    """Deployment-level settings, read from DOGS_CATS_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="DOGS_CATS_", frozen=True, populate_by_name=True)

    platform: PlatformName = Field(default="local", description="Default for the per-run `platform` Param.")
    state_dir: Path = Field(
        default=Path.home() / ".local" / "state" / "dogs-cats-triton",
        description="Local platform: the Triton state file, logs and model repository copy.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "dogs-cats-triton",
        description="Downloaded source archives, kept so an interrupted download resumes.",
    )
    triton_http_port: int = HTTP_PORT
    triton_grpc_port: int = GRPC_PORT
    triton_metrics_port: int = METRICS_PORT
    triton_ready_timeout_s: float = 120.0
    prometheus_port: int = Field(
        default=9090, description="Local platform: the port Prometheus answers on (127.0.0.1 only)."
    )
    prometheus_binary: str = Field(
        default="prometheus",
        description="Local platform: the Prometheus to run, a path or a name on PATH (`make` builds one).",
    )
    triton_instances: int = Field(
        default=2, ge=1, description="Model instances in the local server (2 x 1 thread was best on 2 cores)."
    )
    triton_ort_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per instance; 0 shares the cores out evenly."
    )
    training_python: str = Field(
        default="", description="Interpreter for local training; empty uses the current one."
    )
    # What a run's conf may name (core/policy.py; docs/security.md).
    allowed_roots: list[Path] = Field(
        default=[],
        description=(
            "Local folders a conf's paths (data_bucket, source, inputs and outputs) may lie under, as a "
            "JSON list; none by default, so a local path is refused until the deployment names its roots."
        ),
    )
    allowed_networks: list[IPvAnyNetwork] = Field(
        default=[],
        description=(
            "Networks an http(s) source may resolve to beyond the public internet (JSON list, e.g. "
            '["10.20.0.0/16"]); loopback, link-local, private and reserved addresses are refused otherwise.'
        ),
    )
    max_archive_bytes: int = Field(
        default=8 << 30,
        ge=1,
        description="Largest total an archive source may unpack to (a zip bomb's guard).",
    )
    max_archive_members: int = Field(
        default=50_000, ge=1, description="Most members an archive source may hold (Kaggle's zip has 25,000)."
    )
    # Kubernetes platform.
    namespace: str = "dogs-cats"
    kubernetes_conn_id: str = "kubernetes_default"
    training_image: str = "ghcr.io/dogs-cats-triton/training:latest"
    service_account: str = "dogs-cats-training"
    gpu_node_selector: str = "cloud.google.com/gke-accelerator=nvidia-l4"
    gpus: int = Field(
        default=1,
        ge=0,
        description=(
            "GPUs for the training pod and each Triton pod. 0, for clusters without GPUs (such as "
            "`make cluster`'s): no GPU limit, node selector or toleration, and the CPU Triton image."
        ),
    )
    registry: str = Field(
        default="us-docker.pkg.dev/my-project/dogs-cats",
        description="Where the BuildKit pod pushes the Triton image (Artifact Registry, GHCR, ...).",
    )
    registry_secret: str = Field(
        default="registry-push",
        description="dockerconfigjson Secret the build pod pushes with; empty for a registry without auth.",
    )
    registry_plain_http: bool = Field(
        default=False,
        description="The registry speaks plain HTTP (`make cluster`'s): BuildKit pulls and pushes so.",
    )
    builder_image: str = "moby/buildkit:v0.34.2-rootless"
    builder_rootless: bool = Field(
        default=True,
        description=(
            "Rootless BuildKit (unconfined seccomp and AppArmor, no privileges). False runs it as root in a "
            "privileged pod, for nodes whose kernel refuses RootlessKit's uid map (`make cluster`'s here)."
        ),
    )
    cpu_runtime_image: str = Field(
        default="",
        description="With gpus=0: the CPU Triton runtime (packaging/Dockerfile.cpu-runtime) to build on.",
    )
    storage_emulator_host: str = Field(
        default="",
        validation_alias="STORAGE_EMULATOR_HOST",
        description="A GCS emulator the pods use too (the cluster's fake-gcs-server); empty on real GCS.",
    )
    # Pod sizes, one per pod and flavour: the GPU one where gpus > 0, else the CPU one.
    training_pod_gpu: PodSize = Field(
        default=PodSize(cpu="4", memory="16Gi", memory_limit="24Gi"),
        description="Training beside a GPU: CPU and memory enough that the input pipeline keeps it fed.",
    )
    training_pod_cpu: PodSize = Field(
        default=PodSize(cpu="1", memory="2Gi", memory_limit="8Gi"),
        description="Training on CPUs: requests small enough for a 2-core node (`make cluster`'s).",
    )
    build_pod_gpu: PodSize = Field(
        default=PodSize(
            cpu="2",
            memory="4Gi",
            memory_limit="8Gi",
            ephemeral_storage="40Gi",
            ephemeral_storage_limit="60Gi",
        ),
        description="Building the NGC-based image: BuildKit pulls, unpacks and pushes a ~10 GB base.",
    )
    build_pod_cpu: PodSize = Field(
        default=PodSize(
            cpu="500m",
            memory="512Mi",
            memory_limit="4Gi",
            ephemeral_storage="4Gi",
            ephemeral_storage_limit="12Gi",
        ),
        description="Building the CPU image: a ~1 GB runtime base, requests small enough for a 2-core node.",
    )
    triton_pod_gpu: PodSize = Field(
        default=PodSize(cpu="2", memory="8Gi", memory_limit="16Gi"),
        description="Triton on a GPU node; the memory limit keeps a leak from taking the node down with it.",
    )
    triton_pod_cpu: PodSize = Field(
        default=PodSize(cpu="500m", memory="1Gi", memory_limit="4Gi"),
        description="Triton's CPU image: small requests, so it fits beside the rest on a small node.",
    )
    serving_name: str = "dogs-cats-triton"
    triton_admin_secret: str = Field(
        default="dogs-cats-triton-admin",
        description="Secret with the key Triton's control APIs ask for; the deploy task creates it once.",
    )
    serving_replicas: int = Field(
        default=2,
        ge=0,
        description=(
            "Triton pods at the least; 0: a batch-only model idles at zero between batch runs "
            "(needs serving_max_replicas 1 or more: KEDA wakes it)."
        ),
    )
    serving_max_replicas: int = Field(
        default=0,
        ge=0,
        description="Above serving_replicas: KEDA scales between the two (needs prometheus_url).",
    )
    serving_queue_per_compute_target: float = Field(
        default=1.0,
        gt=0,
        description="KEDA adds replicas while requests queue in Triton longer than this times their compute.",
    )
    serving_scale_down_window_s: int = Field(
        default=600, ge=0, description="How long the load must stay low before KEDA removes a replica."
    )
    serving_idle_s: int = Field(
        default=300,
        ge=MIN_SERVING_IDLE_S,
        description=(
            "With serving_replicas 0: how long the last pod stays after the load and the last batch "
            "run have gone (KEDA's cooldownPeriod; shorter than the time the last load takes to "
            "reach KEDA could wake the model again with nothing asking)."
        ),
    )
    serving_url: str = Field(
        default="",
        description=(
            "host:port the deploy and inference tasks call (a port-forward); empty uses the Service's "
            "ClusterIP, which Airflow reaches inside the cluster or from a node."
        ),
    )
    rollout_timeout_s: float = 900.0
    prometheus_url: str = Field(
        default="",
        description="Kubernetes: the Prometheus scraping the Triton pods (http://host:9090); empty: none.",
    )
    # The dogs_cats_batch DAG.
    batch_input: str = Field(
        default="", description="Standing input that dogs_cats_batch re-classifies after each deployment."
    )
    batch_output: str = Field(default="", description="Where dogs_cats_batch writes, one folder per run.")

    @model_validator(mode="after")
    def _autoscaling_has_what_it_reads(self) -> Self:
        if self.platform != "kubernetes":
            return self
        if self.serving_replicas == 0 and self.serving_max_replicas == 0:
            raise ValueError(
                "serving_replicas 0 idles the model at zero, and KEDA is what wakes it: set "
                "serving_max_replicas (1 or more) and DOGS_CATS_PROMETHEUS_URL"
            )
        autoscaled = self.serving_max_replicas > self.serving_replicas
        if autoscaled and not self.prometheus_url:
            raise ValueError(
                "serving_max_replicas above serving_replicas asks KEDA to scale on Prometheus' "
                "figures: set DOGS_CATS_PROMETHEUS_URL"
            )
        return self

    def pod_size(self, pod: Literal["training", "build", "triton"]) -> PodSize:
        """The size of one of the platform's pods, for this deployment's flavour (GPU or CPU)."""
        size: PodSize = getattr(self, f"{pod}_pod_{'gpu' if self.gpus else 'cpu'}")
        return size


def gpu_node_labels(environment: Environment) -> dict[str, str]:
    """`key=value` of DOGS_CATS_GPU_NODE_SELECTOR as the nodeSelector every GPU pod uses;
    none without GPUs."""
    if not environment.gpus:
        return {}
    key, _, value = environment.gpu_node_selector.partition("=")
    return {key: value}


def ort_threads_per_instance(environment: Environment) -> int:
    """Threads for each model instance: as set, or the machine's cores shared out evenly."""
    if environment.triton_ort_threads:
        return environment.triton_ort_threads
    return max(1, (os.cpu_count() or 1) // environment.triton_instances)


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a local path or gs:// URI with single slashes."""
    cleaned = [base.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
    return "/".join(cleaned)


def safe_name(text: str) -> str:
    """Airflow run ids hold ':' and '+'; keep object names portable."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def param_specs(environment: Environment | None = None) -> dict[str, dict[str, Any]]:
    """JSON-schema keyword arguments for one Airflow Param per RunConfig field.

    Returned as plain dicts so this module stays free of Airflow; the DAG wraps
    each in `airflow.sdk.Param`. Required fields get no default, so a trigger
    without them is refused with the schema's message.
    """
    env = environment or Environment()
    specs = _json_specs(RunConfig)
    # A deployment either has a cluster or not: the platform is set once by
    # DOGS_CATS_PLATFORM, and recorded in every run's conf for the UI.
    specs["platform"]["default"] = env.platform
    specs["platform"]["enum"] = [env.platform]
    specs["platform"]["description"] += " Set for this deployment by DOGS_CATS_PLATFORM."
    return specs


def batch_param_specs(environment: Environment | None = None) -> dict[str, dict[str, Any]]:
    """The dogs_cats_batch DAG's Params; input and output default to the standing ones."""
    env = environment or Environment()
    specs = _json_specs(BatchRunConfig)
    specs["input"]["default"] = env.batch_input or None
    specs["output"]["default"] = env.batch_output or None
    return specs


def _json_specs(config: type[BaseModel]) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for name, prop in config.model_json_schema()["properties"].items():
        spec = {k: v for k, v in prop.items() if k != "title"} | {"title": name.replace("_", " ")}
        # Airflow's trigger form treats a field whose type excludes null as required and
        # keeps its Trigger button disabled while one is empty. An optional string, and a
        # field whose default follows other fields (default_factory), are nullable: null
        # means the field's default (config_from_params).
        if spec.get("default") == "" or config.model_fields[name].default_factory is not None:
            spec["type"], spec["default"] = ["null", spec["type"]], None
        specs[name] = spec
    return specs


def config_from_params(config: type[OptionsT], params: dict[str, Any]) -> OptionsT:
    """Validate a run's params (which Airflow fills with defaults) or a CLI's parsed arguments
    into `config`; a null (a field left empty in the trigger form, a flag not given for a
    default that follows other fields) takes the field's default."""
    known = set(config.model_fields)
    return config.model_validate({k: v for k, v in params.items() if k in known and v is not None})


def training_python(environment: Environment) -> str:
    return environment.training_python or sys.executable


def options_of(options: type[OptionsT], values: BaseModel, **extra: Any) -> OptionsT:
    """`options` filled from the fields it shares with `values` (e.g. a RunConfig's staging part)."""
    return options.model_validate({**values.model_dump(include=set(options.model_fields)), **extra})


def add_arguments(parser: argparse.ArgumentParser, options: type[BaseModel]) -> None:
    """One `--flag` per field of `options`, with its type, choices, default and description."""
    for name, field in options.model_fields.items():
        flag = "--" + name.replace("_", "-")
        # argparse formats help with %: a description's "98%" would break --help.
        described = (field.description or "").replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=field.default, help=described
            )
            continue
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        kind: Any = type(choices[0]) if choices else field.annotation
        default: dict[str, Any] = (
            {"required": True}
            if field.is_required()
            # None leaves a default that follows other fields (default_factory) to the model.
            else {"default": None if field.default_factory else field.default}
        )
        parser.add_argument(flag, type=kind, choices=choices, help=described, **default)


def to_arguments(options: BaseModel) -> list[str]:
    """The command line that `add_arguments` parses back into `options`."""
    arguments: list[str] = []
    for name, value in options.model_dump().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            arguments.append(flag if value else "--no-" + flag.removeprefix("--"))
        else:
            arguments += [flag, str(value)]
    return arguments


def options_from_namespace(
    parser: argparse.ArgumentParser, options: type[OptionsT], args: argparse.Namespace
) -> OptionsT:
    """Validate parsed arguments into `options`; a bad value ends with the parser's usage error."""
    try:
        return config_from_params(options, vars(args))
    except ValidationError as exc:
        parser.error(refused_settings(exc))
