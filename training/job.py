"""The training job's parameters, shared by the CLI, the local process and the pod.

Kept free of TensorFlow so the Airflow side can build the command line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingJob:
    dataset_uri: str
    output_uri: str
    architecture: str = "small"
    image_size: int = 180
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 3
    seed: int = 1337

    def to_args(self) -> list[str]:
        """Arguments of `python -m training train` that rebuild this job."""
        return [
            "--dataset-uri", self.dataset_uri,
            "--output-uri", self.output_uri,
            "--model", self.architecture,
            "--image-size", str(self.image_size),
            "--epochs", str(self.epochs),
            "--batch-size", str(self.batch_size),
            "--learning-rate", str(self.learning_rate),
            "--patience", str(self.patience),
            "--seed", str(self.seed),
        ]  # fmt: skip

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset-uri", required=True)
        parser.add_argument("--output-uri", required=True)
        parser.add_argument("--model", dest="architecture", default="small", choices=["small", "xception"])
        parser.add_argument("--image-size", type=int, default=180)
        parser.add_argument("--epochs", type=int, default=5)
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--learning-rate", type=float, default=1e-3)
        parser.add_argument("--patience", type=int, default=3, help="epochs without val_loss improvement")
        parser.add_argument("--seed", type=int, default=1337)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainingJob:
        return cls(
            dataset_uri=args.dataset_uri,
            output_uri=args.output_uri,
            architecture=args.architecture,
            image_size=args.image_size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            patience=args.patience,
            seed=args.seed,
        )
