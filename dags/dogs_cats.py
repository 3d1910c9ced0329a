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
        **PLATFORM.instance_options(),
    )
    return version.to_dict()


@task
def list_shards(input_uri: str, shards_uri: str, images_per_shard: int) -> list[str]:
    """Stream the input listing into shard files; one mapped task per shard follows."""
    from client.batch import write_shards

    return write_shards(input_uri, shards_uri, images_per_shard)


@task(max_active_tis_per_dagrun=4)
def classify_shard(
    shard_uri: str, endpoint: dict[str, Any], batch_options: dict[str, Any], output_uri: str
) -> str:
    """One shard through Triton; resumable, so a retried shard finishes what it started."""
    from client.batch import BatchOptions, run_batch, shard_images, shard_output

    options = BatchOptions(model_name=endpoint["model_name"], **batch_options)
    url = endpoint["grpc_url"] if options.protocol == "grpc" else endpoint["url"]
    shard_out = shard_output(output_uri, shard_uri)
    run_batch(url, shard_uri, shard_out, options, images=shard_images(shard_uri))
    return shard_out


@task
def merge_predictions(
    shard_outputs: list[str], endpoint: dict[str, Any], staged: dict[str, Any], batch_options: dict[str, Any],
    input_uri: str, output_uri: str,
) -> dict[str, str]:  # fmt: skip
    """All shards' predictions and one report (JSON and HTML) for the run."""
    from client.batch import BatchOptions, merge_outputs
    from pipeline.settings import join_uri

    merge_outputs(
        # One slice request; iterating asks past the end, which the Task SDK logs as an
        # "XCom not found" ERROR in a task that succeeds (apache/airflow#73175).
        list(shard_outputs[:]),
        output_uri,
        input_uri=input_uri,
        options=BatchOptions(model_name=endpoint["model_name"], **batch_options),
        class_names=staged["classes"],
    )
    return {name: join_uri(output_uri, name) for name in ("predictions.jsonl", "report.json", "report.html")}


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
    shards = list_shards(run["inference_input"], run["shards_uri"], run["images_per_shard"])
    endpoint >> shards
    classified: Any = classify_shard.partial(
        endpoint=endpoint, batch_options=run["batch_options"], output_uri=run["predictions_uri"]
    ).expand(shard_uri=shards)
    merge_predictions(
        classified, endpoint, staged, run["batch_options"], run["inference_input"], run["predictions_uri"]
    )


dogs_cats()
