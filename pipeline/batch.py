"""Stage 5 as Airflow tasks, shared by the dogs_cats DAG and the dogs_cats_batch DAG.

The listing is streamed into shard files; one mapped task classifies each shard
(resumable, so a retried shard finishes what it started); one task merges all
shards into predictions.jsonl and the report, and emits the PREDICTIONS asset.
"""

from __future__ import annotations

from airflow.sdk import XComArg, task

from pipeline.assets import PREDICTIONS, annotate
from pipeline.plan import BatchJob
from pipeline.platforms import resolved


@task
def list_shards(job: BatchJob) -> list[str]:
    """Stream the input listing into shard files; one mapped task per shard follows."""
    from client.batch import write_shards

    return write_shards(job.input_uri, job.shards_uri, job.params.images_per_shard)


@task(max_active_tis_per_dagrun=4)
def classify_shard(shard_uri: str, job: BatchJob) -> str:
    from client.batch import run_batch, shard_images, shard_output

    shard_out = shard_output(job.output_uri, shard_uri)
    run_batch(job.url, shard_uri, shard_out, job.options(), images=shard_images(shard_uri))
    return shard_out


@task(outlets=[PREDICTIONS])
def merge_predictions(shard_outputs: list[str], job: BatchJob) -> dict[str, str]:
    """All shards' predictions and one report (JSON and HTML)."""
    from client.batch import merge_outputs
    from core.settings import join_uri

    report = merge_outputs(
        # One slice request; iterating asks past the end, which the Task SDK logs as an
        # "XCom not found" ERROR in a task that succeeds (apache/airflow#73175).
        list(shard_outputs[:]),
        job.output_uri,
        input_uri=job.input_uri,
        options=job.options(),
        class_names=job.class_names,
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


def batch_inference(job: XComArg) -> XComArg:
    """list_shards -> classify_shard (one per shard) -> merge_predictions, for `job`."""
    shards = list_shards(resolved(job))
    classified = classify_shard.partial(job=job).expand(shard_uri=shards)
    return merge_predictions(resolved(classified), resolved(job))
