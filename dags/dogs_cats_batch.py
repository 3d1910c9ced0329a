"""
# dogs_cats_batch

Classify any folder of images with the model Triton serves now, through the
KServe v2 protocol, and write predictions.jsonl and a report (accuracy and a
confusion matrix when the input's folders are class names).

Runs on its own whenever `dogs_cats` deploys a model (the `dogs_cats.served_model`
asset), re-classifying the standing input `DOGS_CATS_BATCH_INPUT` into
`DOGS_CATS_BATCH_OUTPUT`; without one, those runs are skipped. Trigger it by hand
for any input:

    airflow dags trigger dogs_cats_batch --conf '{"input": "/data/new-photos", "output": "/data/predictions"}'

It runs the same tasks as the batch stage of `dogs_cats`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk.serde import allow_class

from core.constants import MODEL_NAME
from core.settings import Environment, batch_param_specs
from deploy import Endpoint
from pipeline.assets import SERVED_MODEL
from pipeline.batch import batch_inference
from pipeline.plan import BatchJob
from pipeline.platforms import platform_for

ENVIRONMENT = Environment()
PLATFORM = platform_for(ENVIRONMENT)
for xcom_class in (BatchJob, Endpoint):
    allow_class(xcom_class)


@task
def plan_batch() -> BatchJob:
    """The input, a per-run output folder and the endpoint serving now; skipped without an input."""
    from client.triton import Triton, class_names, model_info
    from core.settings import BatchParams, BatchRunConfig, config_from_params, join_uri, options_of, safe_name

    context = get_current_context()
    config = config_from_params(BatchRunConfig, dict(context["params"]))
    if not config.input or not config.output:
        raise AirflowSkipException(
            "no input or output: trigger with conf input and output, "
            "or set DOGS_CATS_BATCH_INPUT and DOGS_CATS_BATCH_OUTPUT for the standing input"
        )
    endpoint = PLATFORM.served_endpoint(MODEL_NAME)
    triton = Triton(endpoint.url)
    try:
        labels = class_names(triton, model_info(triton, endpoint.model_name))
    finally:
        triton.close()
    return BatchJob(
        params=options_of(BatchParams, config),
        input_uri=config.input,
        output_uri=join_uri(config.output, safe_name(context["run_id"])),
        endpoint=endpoint,
        class_names=labels,
    )


@dag(
    dag_id="dogs_cats_batch",
    schedule=SERVED_MODEL,
    catchup=False,
    doc_md=__doc__,
    tags=["ml", "triton", "batch", f"platform:{PLATFORM.name}"],
    params={name: Param(**spec) for name, spec in batch_param_specs(ENVIRONMENT).items()},
    default_args={"owner": "dogs-cats-triton", "retries": 1, "retry_delay": timedelta(seconds=30)},
)
def dogs_cats_batch() -> None:
    job: Any = plan_batch()
    batch_inference(job)


dogs_cats_batch()
