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

from typing import Any

from airflow.sdk import Param, dag

from core.settings import Environment, param_specs
from pipeline.platforms import platform_for
from pipeline.tasks import (
    DEFAULT_ARGS,
    batch_inference,
    challenge_champion,
    package,
    plan_batch,
    plan_run,
    quality_gate,
    stage_data,
)

# The deployment's settings, read when the file is parsed: the platform decides the tasks.
ENVIRONMENT = Environment()
PLATFORM = platform_for(ENVIRONMENT)


@dag(
    dag_id="dogs_cats",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["ml", "triton", f"platform:{PLATFORM.name}"],
    params={name: Param(**spec) for name, spec in param_specs(ENVIRONMENT).items()},
    default_args=DEFAULT_ARGS,
)
def dogs_cats() -> None:
    # TaskFlow calls return XComArgs, which the decorators' type hints do not express;
    # each task body is typed against the objects they resolve to.
    plan: Any = plan_run()
    staged: Any = stage_data(plan)
    trained = PLATFORM.train_task(plan)
    staged >> trained
    packaged: Any = package(plan)
    trained >> quality_gate(plan) >> packaged
    version: Any = challenge_champion(plan, packaged)  # passed on only when it may replace the served one
    endpoint: Any = PLATFORM.deploy_task(version, plan)
    job: Any = plan_batch(plan, endpoint, staged)
    PLATFORM.keep_serving(job, batch_inference(job), after=endpoint)


dogs_cats()
