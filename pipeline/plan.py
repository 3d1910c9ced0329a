"""A run's plan: every URI a run reads or writes, decided once from its config.

Stages pass URIs, never data; computing them in one place keeps the layout of
the bucket documented by code:

    {bucket}/datasets/<name>/{train,val,test}/<class>/...   + manifest.json
    {bucket}/models/<run>/                              saved_model/, model.onnx, labels.txt, metrics.json
    {bucket}/model_repository/<platform>/dogs_cats/     Triton repository, versions 1, 2, ...
    {bucket}/images/                                     Triton image build contexts (kubernetes)
    {bucket}/predictions/<run>/                         predictions.jsonl, report.json, report.html,
                                                        shards/ (listing + one output folder per shard)

The batch stage gets a `BatchJob` of its own, which the dogs_cats_batch DAG
builds too: both run the same tasks (pipeline/tasks.py).

The plan is a frozen pydantic model: it crosses XCom whole, through Airflow's
pydantic serialiser (`model_dump` out, `model_validate` back in), so every task
reads typed fields and a renamed field fails in mypy rather than in a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from core.settings import BatchParams, RunConfig, join_uri, options_of
from deploy import Endpoint
from training.job import TrainingJob

if TYPE_CHECKING:
    from client.batch import BatchOptions


class RunPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    config: RunConfig
    dataset_uri: str
    model_uri: str
    repository_uri: str
    images_uri: str
    smoke_images_uri: str
    test_images_uri: str
    predictions_uri: str
    shards_uri: str
    inference_input: str
    training: TrainingJob

    def batch_job(self, endpoint: Endpoint, class_names: tuple[str, ...]) -> BatchJob:
        """The batch stage: the run's inference input through the endpoint just deployed."""
        return BatchJob(
            params=options_of(BatchParams, self.config),
            input_uri=self.inference_input,
            output_uri=self.predictions_uri,
            endpoint=endpoint,
            class_names=class_names,
        )


class BatchJob(BaseModel):
    """Classify every image under `input_uri` with the served model, writing under `output_uri`:
    predictions.jsonl, report.json, report.html and shards/ (the listing and each shard's parts).

    `class_names` are the model's labels: input folders named after them count as ground truth.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: BatchParams
    input_uri: str
    output_uri: str
    endpoint: Endpoint
    class_names: tuple[str, ...] = ()

    @property
    def shards_uri(self) -> str:
        return join_uri(self.output_uri, "shards")

    @property
    def url(self) -> str:
        """Where the client connects, in the protocol the params ask for."""
        grpc = self.params.inference_protocol == "grpc"
        return self.endpoint.grpc_url if grpc else self.endpoint.url

    def options(self) -> BatchOptions:
        """How the batch client calls the served model."""
        from client.batch import BatchOptions  # tritonclient: only the tasks that call Triton load it

        return BatchOptions(
            model_name=self.endpoint.model_name,
            protocol=self.params.inference_protocol,
            encoded=self.params.inference_encoded,
        )


def make_plan(config: RunConfig, run_id: str) -> RunPlan:
    dataset_uri = config.dataset_uri()
    model_uri = config.run_uri("models", run_id)
    predictions_uri = config.run_uri("predictions", run_id)
    return RunPlan(
        config=config,
        dataset_uri=dataset_uri,
        model_uri=model_uri,
        repository_uri=join_uri(config.data_bucket, "model_repository", config.platform),
        images_uri=join_uri(config.data_bucket, "images"),
        smoke_images_uri=join_uri(dataset_uri, "val"),
        test_images_uri=join_uri(dataset_uri, "test"),
        predictions_uri=predictions_uri,
        shards_uri=join_uri(predictions_uri, "shards"),
        inference_input=config.inference_input or join_uri(dataset_uri, "test"),
        training=options_of(TrainingJob, config, dataset_uri=dataset_uri, output_uri=model_uri),
    )
