"""`python -m training {stage,train}`: the entrypoint of local processes and pods alike."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from core.cli import reports_errors
from core.settings import Environment, StagingParams, add_arguments, options_from_namespace
from training.job import TrainingJob


@reports_errors("python -m training")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    commands = parser.add_subparsers(dest="command", required=True)
    stage = commands.add_parser("stage", help="stage an image-folder dataset into the bucket")
    stage.add_argument("--source", required=True)
    stage.add_argument("--dataset-uri", required=True)
    add_arguments(stage, StagingParams)
    add_arguments(commands.add_parser("train", help="train and export a model"), TrainingJob)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "stage":
        from core.policy import access_policy
        from training.staging import StagingOptions, stage_dataset

        options = options_from_namespace(parser, StagingOptions, args)
        environment = Environment()
        policy = access_policy(environment)
        policy.check_source("source", args.source)
        policy.check_location("dataset_uri", args.dataset_uri)
        manifest = stage_dataset(
            args.source, args.dataset_uri, options, cache_dir=environment.cache_dir, policy=policy
        )
        print(json.dumps(manifest["counts"]))
    else:
        from training.train import train

        metrics = train(options_from_namespace(parser, TrainingJob, args))
        print(json.dumps({key: metrics[key] for key in ("val_accuracy", "test_accuracy")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
