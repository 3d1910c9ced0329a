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

It runs the same tasks as the batch stage of `dogs_cats`. On kubernetes a setup task,
`wake_serving`, wakes a model idling at zero (`DOGS_CATS_SERVING_REPLICAS=0`) before the
first request, and a teardown, `release_serving`, lets it go back after the last.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag

from core.settings import Environment, batch_param_specs
from pipeline.assets import SERVED_MODEL
from pipeline.platforms import platform_for
from pipeline.tasks import DEFAULT_ARGS, batch_inference, plan_standing_batch

# The deployment's settings, read when the file is parsed: the platform decides the tasks.
ENVIRONMENT = Environment()
PLATFORM = platform_for(ENVIRONMENT)


@dag(
    dag_id="dogs_cats_batch",
    schedule=SERVED_MODEL,
    catchup=False,
    doc_md=__doc__,
    tags=["ml", "triton", "batch", f"platform:{PLATFORM.name}"],
    params={name: Param(**spec) for name, spec in batch_param_specs(ENVIRONMENT).items()},
    default_args=DEFAULT_ARGS,
)
def dogs_cats_batch() -> None:
    job: Any = plan_standing_batch()
    PLATFORM.keep_serving(job, batch_inference(job))


dogs_cats_batch()
