"""
# dogs_cats

Stage an image-folder dataset, train a Keras CNN, package it for NVIDIA Triton,
serve it, and classify a batch of images through the KServe v2 protocol.

Trigger with conf; only `data_bucket` is required:

    airflow dags trigger dogs_cats --conf '{"data_bucket": "/tmp/bucket", "source": "/data/PetImages"}'

Every task passes URIs (never data) to the next; outputs land in the bucket.
The platform (local or kubernetes) is set for the deployment by
`DOGS_CATS_PLATFORM` and recorded in each run's conf.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk.serde import allow_class

from core.constants import MODEL_NAME
from core.settings import Environment, param_specs
from deploy import Endpoint
from model_repository.repository import RepositoryVersion
from pipeline.plan import RunPlan
from pipeline.platforms import platform_for

ENVIRONMENT = Environment()
PLATFORM = platform_for(ENVIRONMENT)
# Tasks pass these typed objects; Airflow deserialises XCom only into classes it allows.
for xcom_class in (RunPlan, RepositoryVersion, Endpoint):
    allow_class(xcom_class)


@task(task_id="plan")
def plan_run() -> RunPlan:
    """Validate the conf once and decide every URI of this run."""
    from core.settings import run_config_from_params
    from pipeline.plan import make_plan

    context = get_current_context()
    return make_plan(run_config_from_params(dict(context["params"])), context["run_id"])


@task
def stage_data(plan: RunPlan) -> dict[str, Any]:
    from core.settings import options_of
    from training.staging import StagingOptions, stage_dataset

    options = options_of(StagingOptions, plan.config)
    manifest = stage_dataset(plan.config.source, plan.dataset_uri, options, cache_dir=ENVIRONMENT.cache_dir)
    return {"dataset_uri": plan.dataset_uri, "classes": manifest["classes"], "counts": manifest["counts"]}


@task
def quality_gate(plan: RunPlan) -> None:
    """Skip packaging and deployment of a model under min_val_accuracy, saying why."""
    from training.evaluate import model_gate_reason

    if reason := model_gate_reason(plan.model_uri, plan.config.min_val_accuracy):
        raise AirflowSkipException(reason)


@task
def package(plan: RunPlan) -> RepositoryVersion:
    from model_repository.repository import package_model

    return package_model(
        plan.model_uri,
        plan.repository_uri,
        flavour=PLATFORM.serving_flavour,
        model_name=MODEL_NAME,
        max_batch_size=plan.config.max_batch_size,
        precision=plan.config.serving_precision,
        tensorrt_fp16=plan.config.tensorrt_fp16,
        **PLATFORM.instance_options(),
    )


@task
def list_shards(plan: RunPlan) -> list[str]:
    """Stream the input listing into shard files; one mapped task per shard follows."""
    from client.batch import write_shards

    return write_shards(plan.inference_input, plan.shards_uri, plan.config.images_per_shard)


@task(max_active_tis_per_dagrun=4)
def classify_shard(shard_uri: str, endpoint: Endpoint, plan: RunPlan) -> str:
    """One shard through Triton; resumable, so a retried shard finishes what it started."""
    from client.batch import run_batch, shard_images, shard_output

    options = plan.batch_options(endpoint.model_name)
    url = endpoint.grpc_url if options.protocol == "grpc" else endpoint.url
    shard_out = shard_output(plan.predictions_uri, shard_uri)
    run_batch(url, shard_uri, shard_out, options, images=shard_images(shard_uri))
    return shard_out


@task
def merge_predictions(
    shard_outputs: list[str], endpoint: Endpoint, staged: dict[str, Any], plan: RunPlan
) -> dict[str, str]:
    """All shards' predictions and one report (JSON and HTML) for the run."""
    from client.batch import merge_outputs
    from core.settings import join_uri

    merge_outputs(
        # One slice request; iterating asks past the end, which the Task SDK logs as an
        # "XCom not found" ERROR in a task that succeeds (apache/airflow#73175).
        list(shard_outputs[:]),
        plan.predictions_uri,
        input_uri=plan.inference_input,
        options=plan.batch_options(endpoint.model_name),
        class_names=staged["classes"],
    )
    names = ("predictions.jsonl", "report.json", "report.html")
    return {name: join_uri(plan.predictions_uri, name) for name in names}


@dag(
    dag_id="dogs_cats",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["ml", "triton", f"platform:{PLATFORM.name}"],
    params={name: Param(**spec) for name, spec in param_specs(ENVIRONMENT).items()},
    # Every task is safe to retry: staging and training resume, packaging reuses
    # the version of a model already packaged, deployment and inference rewrite.
    default_args={"owner": "dogs-cats-triton", "retries": 1, "retry_delay": timedelta(seconds=30)},
)
def dogs_cats() -> None:
    # TaskFlow calls return XComArgs, which the decorators' type hints do not express;
    # each task body is typed against the objects they resolve to.
    plan: Any = plan_run()
    staged: Any = stage_data(plan)
    trained = PLATFORM.train_task(plan)
    staged >> trained
    version: Any = package(plan)
    trained >> quality_gate(plan) >> version
    endpoint: Any = PLATFORM.deploy_task(version, plan)
    shards: Any = list_shards(plan)
    endpoint >> shards
    classified: Any = classify_shard.partial(endpoint=endpoint, plan=plan).expand(shard_uri=shards)
    merge_predictions(classified, endpoint, staged, plan)


dogs_cats()
