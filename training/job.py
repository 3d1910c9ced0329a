"""The training job's parameters, shared by the CLI, the local process and the pod.

Kept free of TensorFlow so the Airflow side can build the command line. Its
fields, defaults and bounds are the run's `TrainingParams`; the command line
(`core.settings.add_arguments` / `to_arguments`) is generated from them, so the
CLI, the pod's arguments and the DAG's Params cannot drift apart.
"""

from __future__ import annotations

from pydantic import Field

from core.settings import TrainingParams


class TrainingJob(TrainingParams):
    dataset_uri: str = Field(description="The staged dataset (its manifest.json) to train on.")
    output_uri: str = Field(description="Where the model, metrics, charts and checkpoints are written.")
    seed: int = Field(default=1337, description="Seeds Keras, NumPy and the shuffle for repeatable runs.")
