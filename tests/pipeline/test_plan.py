from __future__ import annotations

from pipeline.plan import make_plan
from pipeline.settings import RunConfig
from training.job import TrainingJob


def test_plan_lays_out_the_bucket_per_run() -> None:
    config = RunConfig(data_bucket="gs://b/p", image_size=64, epochs=2)
    plan = make_plan(config, "manual__2026-01-01T00:00:00+00:00")
    assert plan["dataset_uri"] == "gs://b/p/datasets/cats_vs_dogs"
    assert plan["model_uri"] == "gs://b/p/models/manual__2026-01-01T00_00_00_00_00"
    assert plan["repository_uri"] == "gs://b/p/model_repository/local"
    assert plan["predictions_uri"] == "gs://b/p/predictions/manual__2026-01-01T00_00_00_00_00"
    assert plan["inference_input"] == "gs://b/p/datasets/cats_vs_dogs/val"
    assert plan["config"]["epochs"] == 2


def test_plan_training_args_round_trip_through_the_cli() -> None:
    import argparse

    plan = make_plan(RunConfig(data_bucket="/b", model="xception", batch_size=7), "r1")
    parser = argparse.ArgumentParser()
    TrainingJob.add_arguments(parser)
    job = TrainingJob.from_namespace(parser.parse_args(plan["training_args"]))
    assert job == TrainingJob(
        "/b/datasets/cats_vs_dogs", "/b/models/r1", "xception", image_size=180, epochs=5, batch_size=7
    )


def test_explicit_inference_input_wins() -> None:
    plan = make_plan(RunConfig(data_bucket="/b", inference_input="gs://other/images"), "r")
    assert plan["inference_input"] == "gs://other/images"
