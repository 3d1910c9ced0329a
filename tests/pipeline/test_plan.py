from __future__ import annotations

import argparse

from core.settings import RunConfig, add_arguments, options_from_namespace, to_arguments
from pipeline.plan import RunPlan, make_plan
from training.job import TrainingJob


def test_plan_lays_out_the_bucket_per_run() -> None:
    config = RunConfig(data_bucket="gs://b/p", image_size=64, epochs=2)
    plan = make_plan(config, "manual__2026-01-01T00:00:00+00:00")
    assert plan.dataset_uri == "gs://b/p/datasets/cats_vs_dogs"
    assert plan.model_uri == "gs://b/p/models/manual__2026-01-01T00_00_00_00_00"
    assert plan.repository_uri == "gs://b/p/model_repository/local"
    assert plan.predictions_uri == "gs://b/p/predictions/manual__2026-01-01T00_00_00_00_00"
    assert plan.inference_input == "gs://b/p/datasets/cats_vs_dogs/test"
    assert plan.test_images_uri == plan.inference_input
    assert plan.config.epochs == 2


def test_plan_training_args_round_trip_through_the_cli() -> None:
    plan = make_plan(RunConfig(data_bucket="/b", model="xception", batch_size=7, int8=False), "r1")
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainingJob)
    job = options_from_namespace(parser, TrainingJob, parser.parse_args(to_arguments(plan.training)))
    assert job == TrainingJob(
        dataset_uri="/b/datasets/cats_vs_dogs",
        output_uri="/b/models/r1",
        model="xception",
        image_size=180,
        batch_size=7,
        int8=False,
    )
    assert "--no-int8" in to_arguments(plan.training)


def test_explicit_inference_input_wins() -> None:
    plan = make_plan(RunConfig(data_bucket="/b", inference_input="gs://other/images"), "r")
    assert plan.inference_input == "gs://other/images"


def test_the_plan_crosses_xcom_whole_and_typed() -> None:
    """What Airflow stores is the plan's own dump; what a task gets back is an equal RunPlan."""
    plan = make_plan(RunConfig(data_bucket="gs://b", test_fraction=0.1, require_jfif=True), "r")
    restored = RunPlan.model_validate_json(plan.model_dump_json())
    assert restored == plan
    assert isinstance(restored.config, RunConfig)
    assert isinstance(restored.training, TrainingJob)
