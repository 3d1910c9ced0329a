"""Every task body of both DAGs, in one place; the DAG files only wire them.

`dogs_cats` runs plan_run -> stage_data -> (the platform's train task) ->
quality_gate -> package -> challenge_champion -> (the platform's deploy task) ->
plan_batch -> batch_inference; `dogs_cats_batch` runs plan_standing_batch -> batch_inference. On
kubernetes the platform wraps that stage in a wake (setup) and a release (teardown).
The batch stage streams the input listing into shard files, classifies each
shard in a mapped task (resumable, so a retried shard finishes what it
started), and merges all shards into predictions.jsonl and the report.

Tasks pass URIs and typed objects (RunPlan, BatchJob, RepositoryVersion,
Endpoint), never data; the work itself lives in the stage packages. The
deployment's settings (`Environment`, and so the platform) are read when a task
runs, as the DAG files read them when they are parsed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import XComArg, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk.serde import allow_class

from core.constants import MODEL_NAME, SHARD_SLOTS
from core.settings import Environment
from deploy import Endpoint
from model_repository.repository import RepositoryVersion
from pipeline.assets import (
    CHAMPION_TASK,
    DATASET,
    PREDICTIONS,
    REPOSITORY_VERSION,
    VERDICT_XCOM,
    annotate,
    champion_verdict,
)
from pipeline.plan import BatchJob, RunPlan
from pipeline.platforms import platform_for, resolved
from pipeline.rollout_operator import CANARY_XCOM, DEPLOY_TASK

log = logging.getLogger(__name__)

# Every task is safe to retry: staging and training resume, packaging reuses the version of a
# model already packaged, deployment and inference rewrite, and a classified shard's parts stay.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "dogs-cats-triton",
    "retries": 1,
    "retry_delay": timedelta(seconds=30),
}
# Tasks pass these typed objects; Airflow deserialises XCom only into classes it allows.
for xcom_class in (RunPlan, BatchJob, RepositoryVersion, Endpoint):
    allow_class(xcom_class)


@task(task_id="plan")
def plan_run() -> RunPlan:
    """Validate the conf once (its values, and the places it names against the deployment's
    policy) and decide every URI of this run."""
    from core.policy import access_policy, check_run
    from core.settings import RunConfig, config_from_params
    from pipeline.plan import make_plan

    context = get_current_context()
    config = config_from_params(RunConfig, dict(context["params"]))
    check_run(config, access_policy(Environment()))  # before anything is read or written
    return make_plan(config, context["run_id"])


@task(outlets=[DATASET])
def stage_data(plan: RunPlan) -> dict[str, Any]:
    from core.settings import join_uri, options_of
    from training.staging import StagingOptions, stage_dataset

    options = options_of(StagingOptions, plan.config)
    manifest = stage_dataset(plan.config.source, plan.dataset_uri, options, cache_dir=Environment().cache_dir)
    annotate(DATASET, manifest=join_uri(plan.dataset_uri, "manifest.json"), counts=manifest["counts"])
    return {"dataset_uri": plan.dataset_uri, "classes": manifest["classes"], "counts": manifest["counts"]}


@task
def quality_gate(plan: RunPlan) -> None:
    """Skip packaging and deployment of a model under min_test_accuracy, saying why."""
    from training.evaluate import model_gate_reason

    if reason := model_gate_reason(plan.model_uri, plan.config.min_test_accuracy):
        raise AirflowSkipException(reason)


@task(outlets=[REPOSITORY_VERSION])
def package(plan: RunPlan) -> RepositoryVersion:
    from model_repository.repository import package_model

    platform = platform_for(Environment())
    version = package_model(
        plan.model_uri,
        plan.repository_uri,
        flavour=platform.serving_flavour,
        model_name=MODEL_NAME,
        max_batch_size=plan.config.max_batch_size,
        precision=plan.config.serving_precision,
        tensorrt_fp16=plan.config.tensorrt_fp16,
        **platform.instance_options(),
    )
    annotate(
        REPOSITORY_VERSION,
        repository=version.repository_uri,
        version=version.version,
        model=plan.model_uri,
        precision=version.precision,
    )
    return version


@task(task_id=CHAMPION_TASK)
def challenge_champion(plan: RunPlan, version: RepositoryVersion) -> RepositoryVersion:
    """Score the served model on this run's test split beside the new one, and pass the new
    version on only when it is not worse beyond champion_tolerance (or force_deploy says so);
    the verdict goes to the log, the served-model asset event and the run's report."""
    import json

    from core import storage
    from core.settings import join_uri
    from deploy.champion import challenger_figures, judge, score_champion

    context = get_current_context()
    metrics = json.loads(storage.read_text(join_uri(plan.model_uri, "metrics.json")))
    with platform_for(Environment()).serving_now(
        MODEL_NAME, context["dag"].dag_id, context["run_id"]
    ) as endpoint:
        if endpoint is None or endpoint.version == version.version:  # a retry after this run deployed
            champion = None
        else:
            output = join_uri(plan.predictions_uri, "champion")
            champion = score_champion(endpoint, metrics["labels"], plan.test_images_uri, output)
    verdict = judge(
        challenger_figures(metrics, version.precision),
        champion,
        tolerance=plan.config.champion_tolerance,
        force=plan.config.force_deploy,
    )
    context["ti"].xcom_push(key=VERDICT_XCOM, value=verdict)
    log.info("%s", verdict["why"])
    if not verdict["deploy"]:
        raise AirflowSkipException(verdict["why"])
    return version


@task
def plan_batch(plan: RunPlan, endpoint: Endpoint, staged: dict[str, Any]) -> BatchJob:
    """The run's inference input through the endpoint just deployed; folders named after
    the staged classes count as ground truth in the report."""
    return plan.batch_job(endpoint, tuple(staged["classes"]))


@task(task_id="plan_batch")
def plan_standing_batch() -> BatchJob:
    """The input, a per-run output folder and the endpoint serving now; skipped without an input.
    Folders named after the served model's labels count as ground truth in the report."""
    from client.triton import served_labels
    from core.policy import access_policy
    from core.settings import BatchParams, BatchRunConfig, config_from_params, join_uri, options_of, safe_name

    context = get_current_context()
    config = config_from_params(BatchRunConfig, dict(context["params"]))
    if not config.input or not config.output:
        raise AirflowSkipException(
            "no input or output: trigger with conf input and output, "
            "or set DOGS_CATS_BATCH_INPUT and DOGS_CATS_BATCH_OUTPUT for the standing input"
        )
    environment = Environment()
    policy = access_policy(environment)
    policy.check_location("input", config.input)
    policy.check_location("output", config.output)
    endpoint = platform_for(environment).served_endpoint(MODEL_NAME)
    labels = served_labels(endpoint.url, endpoint.model_name)
    return BatchJob(
        params=options_of(BatchParams, config),
        input_uri=config.input,
        output_uri=join_uri(config.output, safe_name(context["run_id"])),
        endpoint=endpoint,
        class_names=labels,
    )


@task
def list_shards(job: BatchJob) -> list[str]:
    """Stream the input listing into shard files; one mapped task per shard follows."""
    from client.batch import write_shards

    return write_shards(job.input_uri, job.shards_uri, job.params.images_per_shard)


@task(max_active_tis_per_dagrun=SHARD_SLOTS)
def classify_shard(shard_uri: str, job: BatchJob) -> str:
    from client.batch import run_batch, shard_images, shard_output

    shard_out = shard_output(job.output_uri, shard_uri)
    run_batch(job.url, shard_uri, shard_out, job.options(), images=shard_images(shard_uri))
    return shard_out


@task(outlets=[PREDICTIONS])
def merge_predictions(shard_outputs: list[str], job: BatchJob) -> dict[str, str]:
    """All shards' predictions and one report (JSON and HTML)."""
    from client.batch import merge_outputs, shards_left_out
    from core.settings import join_uri

    report = merge_outputs(
        # One slice request; iterating asks past the end, which the Task SDK logs as an
        # "XCom not found" ERROR in a task that succeeds (apache/airflow#73175).
        list(shard_outputs[:]),
        job.output_uri,
        input_uri=job.input_uri,
        options=job.options(),
        class_names=job.class_names,
        sections={
            "left_out": shards_left_out(job.shards_uri),
            "serving": _serving_figures(job.endpoint.model_name),
            "champion": champion_verdict(),
        },
    )
    written = {
        name: join_uri(job.output_uri, name) for name in ("predictions.jsonl", "report.json", "report.html")
    }
    annotate(
        PREDICTIONS,
        **written,
        model=f"{job.endpoint.model_name} v{job.endpoint.version}",
        images=report["images"],
        accuracy=report.get("accuracy_by_folder"),
    )
    return written


def _serving_figures(model_name: str) -> dict[str, Any]:
    """What Prometheus saw the served model do during this run, or why there is nothing (the
    report is written either way), and the deploy's canary verdict (None: no canary ran)."""
    from deploy.monitoring import MonitoringError, serving_figures

    prometheus = platform_for(Environment()).prometheus()
    if prometheus is None:
        return {
            "unavailable": "no Prometheus for this platform (make up starts one; DOGS_CATS_PROMETHEUS_URL)"
        }
    context = get_current_context()
    started = context["dag_run"].start_date
    window_s = int((datetime.now(UTC) - started).total_seconds()) if started else 3600
    try:
        figures = serving_figures(prometheus, model_name, window_s)
    except (MonitoringError, OSError) as failure:
        log.warning("no serving figures from %s: %s", prometheus.url, failure)
        figures = {"unavailable": f"{prometheus.url}: {failure}"}
    if DEPLOY_TASK in context["dag"].task_ids:  # the batch DAG has none
        figures["canary"] = context["ti"].xcom_pull(task_ids=DEPLOY_TASK, key=CANARY_XCOM)
    return figures


def batch_inference(job: XComArg) -> XComArg:
    """list_shards -> classify_shard (one per shard) -> merge_predictions, for `job`."""
    shards = list_shards(resolved(job))
    classified = classify_shard.partial(job=job).expand(shard_uri=shards)
    return merge_predictions(resolved(classified), resolved(job))
