"""A run's plan: every URI a run reads or writes, decided once from its config.

Stages pass URIs, never data; computing them in one place keeps the layout of
the bucket documented by code:

    {bucket}/datasets/<name>/{train,val}/<class>/...   + manifest.json
    {bucket}/models/<run>/                              saved_model/, model.onnx, labels.txt, metrics.json
    {bucket}/model_repository/<platform>/dogs_cats/     Triton repository, versions 1, 2, ...
    {bucket}/images/                                     Triton image build contexts (kubernetes)
    {bucket}/predictions/<run>/                         predictions.jsonl, report.json, report.html,
                                                        shards/ (listing + one output folder per shard)
"""

from __future__ import annotations

from typing import Any

from pipeline.settings import RunConfig, join_uri
from training.job import TrainingJob


def make_plan(config: RunConfig, run_id: str) -> dict[str, Any]:
    dataset_uri = config.dataset_uri()
    model_uri = config.run_uri("models", run_id)
    job = TrainingJob(
        dataset_uri=dataset_uri,
        output_uri=model_uri,
        architecture=config.model,
        image_size=config.image_size,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        patience=config.early_stopping_patience,
    )
    return {
        "platform": config.platform,
        "config": config.model_dump(),
        "dataset_uri": dataset_uri,
        "model_uri": model_uri,
        "repository_uri": join_uri(config.data_bucket, "model_repository", config.platform),
        "images_uri": join_uri(config.data_bucket, "images"),
        "smoke_images_uri": join_uri(dataset_uri, "val"),
        "predictions_uri": config.run_uri("predictions", run_id),
        "shards_uri": join_uri(config.run_uri("predictions", run_id), "shards"),
        "images_per_shard": config.images_per_shard,
        "batch_options": {"protocol": config.inference_protocol, "encoded": config.inference_encoded},
        "inference_input": config.inference_input or join_uri(dataset_uri, "val"),
        "training_args": job.to_args(),
    }
