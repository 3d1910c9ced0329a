"""`python -m training {stage,train}`: the entrypoint of local processes and pods alike."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from training.job import TrainingJob


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    commands = parser.add_subparsers(dest="command", required=True)

    stage = commands.add_parser("stage", help="stage an image-folder dataset into the bucket")
    stage.add_argument("--source", required=True)
    stage.add_argument("--dataset-uri", required=True)
    stage.add_argument("--max-images-per-class", type=int, default=0)
    stage.add_argument("--val-fraction", type=float, default=0.2)
    stage.add_argument("--test-fraction", type=float, default=0.0)
    stage.add_argument("--require-jfif", action="store_true")
    stage.add_argument("--source-sha256", default="")

    TrainingJob.add_arguments(commands.add_parser("train", help="train and export a model"))

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "stage":
        from pipeline.settings import Environment
        from training.staging import StagingOptions, stage_dataset

        manifest = stage_dataset(
            args.source,
            args.dataset_uri,
            StagingOptions.from_mapping(vars(args)),
            cache_dir=Environment().cache_dir,
        )
        print(json.dumps(manifest["counts"]))
    else:
        from training.train import train

        metrics = train(TrainingJob.from_namespace(args))
        print(json.dumps({"val_accuracy": metrics["val_accuracy"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
