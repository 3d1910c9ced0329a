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

from pipeline.platforms import platform_for
from pipeline.settings import MODEL_NAME, Environment, param_specs

ENVIRONMENT = Environment()
PLATFORM = platform_for(ENVIRONMENT)


@task(multiple_outputs=True)
def plan() -> dict[str, Any]:
    """Validate the conf once and decide every URI of this run."""
    from pipeline.plan import make_plan
    from pipeline.settings import run_config_from_params

    context = get_current_context()
    return make_plan(run_config_from_params(dict(context["params"])), context["run_id"])


@task
def stage_data(config: dict[str, Any], dataset_uri: str) -> dict[str, Any]:
    from training.staging import StagingOptions, stage_dataset

    manifest = stage_dataset(
        config["source"],
        dataset_uri,
        StagingOptions.from_mapping(config),
        cache_dir=ENVIRONMENT.cache_dir,
    )
    return {"dataset_uri": dataset_uri, "classes": manifest["classes"], "counts": manifest["counts"]}


@task
def quality_gate(config: dict[str, Any], model_uri: str) -> None:
    """Skip packaging and deployment of a model under min_val_accuracy, saying why."""
    from training.evaluate import model_gate_reason

    if reason := model_gate_reason(model_uri, config["min_val_accuracy"]):
        raise AirflowSkipException(reason)


@task
def package(config: dict[str, Any], model_uri: str, repository_uri: str) -> dict[str, Any]:
    from model_repository.repository import package_model

    version = package_model(
        model_uri,
        repository_uri,
        flavour=PLATFORM.serving_flavour,
        model_name=MODEL_NAME,
        max_batch_size=config["max_batch_size"],
        tensorrt_fp16=config["tensorrt_fp16"],
    )
    return version.to_dict()


@task
def batch_inference(
    endpoint: dict[str, Any], staged: dict[str, Any], input_uri: str, output_uri: str
) -> dict[str, str]:
    from client.batch import run_batch
    from pipeline.settings import join_uri

    run_batch(
        endpoint["url"],
        input_uri,
        output_uri,
        model_name=endpoint["model_name"],
        class_names=staged["classes"],
    )
    return {
        "predictions": join_uri(output_uri, "predictions.jsonl"),
        "report": join_uri(output_uri, "report.json"),
    }


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
    # Outputs of TaskFlow calls are XComArgs: indexable and passable at parse time,
    # which the decorators' type hints do not express.
    run: Any = plan()
    staged: Any = stage_data(run["config"], run["dataset_uri"])
    trained = PLATFORM.train_task(run["training_args"])
    staged >> trained
    gate = quality_gate(run["config"], run["model_uri"])
    version: Any = package(run["config"], run["model_uri"], run["repository_uri"])
    trained >> gate >> version
    endpoint = PLATFORM.deploy_task(version, run)
    batch_inference(endpoint, staged, run["inference_input"], run["predictions_uri"])


dogs_cats()
