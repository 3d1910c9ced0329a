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
from pipeline.assets import DATASET, REPOSITORY_VERSION, annotate
from pipeline.batch import batch_inference
from pipeline.plan import BatchJob, RunPlan
from pipeline.platforms import platform_for

ENVIRONMENT = Environment()
PLATFORM = platform_for(ENVIRONMENT)
# Tasks pass these typed objects; Airflow deserialises XCom only into classes it allows.
for xcom_class in (RunPlan, BatchJob, RepositoryVersion, Endpoint):
    allow_class(xcom_class)


@task(task_id="plan")
def plan_run() -> RunPlan:
    """Validate the conf once and decide every URI of this run."""
    from core.settings import RunConfig, config_from_params
    from pipeline.plan import make_plan

    context = get_current_context()
    return make_plan(config_from_params(RunConfig, dict(context["params"])), context["run_id"])


@task(outlets=[DATASET])
def stage_data(plan: RunPlan) -> dict[str, Any]:
    from core.settings import join_uri, options_of
    from training.staging import StagingOptions, stage_dataset

    options = options_of(StagingOptions, plan.config)
    manifest = stage_dataset(plan.config.source, plan.dataset_uri, options, cache_dir=ENVIRONMENT.cache_dir)
    annotate(DATASET, manifest=join_uri(plan.dataset_uri, "manifest.json"), counts=manifest["counts"])
    return {"dataset_uri": plan.dataset_uri, "classes": manifest["classes"], "counts": manifest["counts"]}


@task
def quality_gate(plan: RunPlan) -> None:
    """Skip packaging and deployment of a model under min_val_accuracy, saying why."""
    from training.evaluate import model_gate_reason

    if reason := model_gate_reason(plan.model_uri, plan.config.min_val_accuracy):
        raise AirflowSkipException(reason)


@task(outlets=[REPOSITORY_VERSION])
def package(plan: RunPlan) -> RepositoryVersion:
    from model_repository.repository import package_model

    version = package_model(
        plan.model_uri,
        plan.repository_uri,
        flavour=PLATFORM.serving_flavour,
        model_name=MODEL_NAME,
        max_batch_size=plan.config.max_batch_size,
        precision=plan.config.serving_precision,
        tensorrt_fp16=plan.config.tensorrt_fp16,
        **PLATFORM.instance_options(),
    )
    annotate(
        REPOSITORY_VERSION, repository=version.repository_uri, version=version.version, model=plan.model_uri
    )
    return version


@task
def plan_batch(plan: RunPlan, endpoint: Endpoint, staged: dict[str, Any]) -> BatchJob:
    """The run's inference input through the endpoint just deployed; folders named after
    the staged classes count as ground truth in the report."""
    return plan.batch_job(endpoint, tuple(staged["classes"]))


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
    batch_inference(plan_batch(plan, endpoint, staged))


dogs_cats()
