"""The batch stage as users run it: dogs_cats_batch under the live scheduler, beside the ceiling.

    .venv/bin/python -m benchmarks.batch_stage [--images 2000 20000] [--rounds 3]

Starts Airflow's four components as `make up` does (harness.airflow.running_stack), trains
and serves the demo's model by running dogs_cats once on 500 photos per class, then, for each
input size, in interleaved rounds:

- the ceiling: in-process ONNX Runtime over the same files, decode included, in a fresh
  interpreter (benchmarks.inference.ort_ceiling at its best setting here: batches of 8, two
  workers of one thread each), on the model file Triton serves (the precision packaging chose);
- dogs_cats_batch triggered through the REST API on the same files, timed from list_shards'
  start to merge_predictions' end by the task instances' own dates.

Beside the ratio it reports what the stage pays outside the requests: the listing, each
shard's time from its task's start to its first request (interpreter, imports, connecting),
the wait between tasks, and the merge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.inference import link_images, ort_ceiling
from benchmarks.processes import in_clean_process
from benchmarks.staging import DEFAULT_SOURCE, shared_dataset_missing
from core import storage
from harness.airflow import running_stack, wait_until_finished
from pipeline.stack import AirflowApi

BATCH = "dogs_cats_batch"
DEMO_CONF = {"max_images_per_class": 500}  # make demo's size; everything else the defaults
CEILING = {"batch": 8, "workers": 2, "threads": 1}


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def stage_timing(api: AirflowApi, run_id: str, output: Path) -> dict[str, Any]:
    """Where the stage's time went, from the task instances and the shards' parts."""
    instances = {}
    for instance in api.task_instances(BATCH, run_id):
        key = instance["task_id"] if instance["map_index"] < 0 else f"shard {instance['map_index']}"
        instances[key] = (_when(instance["start_date"]), _when(instance["end_date"]))
    start, end = instances["list_shards"][0], instances["merge_predictions"][1]
    run_folder = next(path for path in output.iterdir() if path.is_dir())
    first_requests = []
    for shard in sorted((run_folder / "shards").glob("shard-*")):
        if shard.is_dir():
            parts = [json.loads(part.read_text()) for part in shard.glob("parts/part-*.json")]
            first_requests.append(min(part["started"] for part in parts))
    shard_starts = sorted(begin for key, (begin, _) in instances.items() if key.startswith("shard "))
    report = json.loads((run_folder / "report.json").read_text())
    return {
        "seconds": round(end - start, 2),
        "images": report["images"],
        "shards": len(shard_starts),
        "listing_s": round(instances["list_shards"][1] - instances["list_shards"][0], 2),
        "first_shard_waits_s": round(shard_starts[0] - instances["list_shards"][1], 2),
        "to_first_request_s": [
            round(request - begin, 2)
            for begin, request in zip(shard_starts, sorted(first_requests), strict=True)
        ],
        "merge_waits_s": round(
            instances["merge_predictions"][0]
            - max(e for k, (_, e) in instances.items() if k.startswith("shard ")),
            2,
        ),
        "merge_s": round(instances["merge_predictions"][1] - instances["merge_predictions"][0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shared_dataset_missing(args.source):
        return 0
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-stage-") as tmp:
        work = Path(tmp)
        # The deployment's policy lets a conf name only these folders (core/policy.py).
        roots = {"DOGS_CATS_ALLOWED_ROOTS": json.dumps([str(work), str(args.source.resolve())])}
        with running_stack(work, roots) as stack:
            stack.wait_for_dag("dogs_cats")
            stack.wait_for_dag(BATCH)
            api = stack.api()
            bucket = work / "bucket"
            conf = {"data_bucket": str(bucket), "source": str(args.source.resolve()), **DEMO_CONF}
            run = wait_until_finished(api, "dogs_cats", api.trigger("dogs_cats", conf), 1800)
            if run["state"] != "success":
                raise SystemExit(f"dogs_cats did not succeed ({run['state']}); see {stack.log_file}")
            (served,) = sorted(
                (bucket / "model_repository" / "local" / "dogs_cats").glob("[0-9]*/model.onnx")
            )
            precision = (
                "int8" if storage.read_text(str(served.parent / "source.txt")).endswith("(int8)") else "fp32"
            )
            print(f"served: {served} ({precision})", file=sys.stderr, flush=True)
            for count in args.images:
                folder = link_images(args.source, work / f"images-{count}", count)
                rounds = []
                for number in range(args.rounds):
                    ceiling = in_clean_process(ort_ceiling, folder=str(folder), onnx=str(served), **CEILING)
                    output = work / f"out-{count}-{number}"
                    run_id = api.trigger(BATCH, {"input": str(folder), "output": str(output)})
                    finished = wait_until_finished(api, BATCH, run_id, 3600)
                    if finished["state"] != "success":
                        raise SystemExit(
                            f"{BATCH} did not succeed ({finished['state']}); see {stack.log_file}"
                        )
                    timing = stage_timing(api, run_id, output)
                    stage_img_s = timing["images"] / timing["seconds"]
                    rounds.append(
                        {
                            "ceiling_img_s": ceiling["img_s"],
                            "stage_img_s": round(stage_img_s, 1),
                            "ratio": round(stage_img_s / ceiling["img_s"], 3),
                            **timing,
                        }
                    )
                    print(f"  {count} images, round {number + 1}: {rounds[-1]}", file=sys.stderr, flush=True)
                results[str(count)] = rounds
    print_table(results, precision)
    return 0


def print_table(results: dict[str, list[dict[str, Any]]], precision: str) -> None:
    print(f"\nserved model: efficientnet_lite0 at {precision.upper()}, make demo's training\n")
    print(
        "| images | round | ceiling img/s | stage img/s | stage / ceiling | shards | listing s "
        "| to first request s (per shard) | merge waits s | merge s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for count, rounds in results.items():
        for number, row in enumerate(rounds, 1):
            print(
                f"| {count} | {number} | {row['ceiling_img_s']:.0f} | {row['stage_img_s']:.0f} "
                f"| {row['ratio']:.2f} "
                f"| {row['shards']} | {row['listing_s']} | {', '.join(map(str, row['to_first_request_s']))} "
                f"| {row['merge_waits_s']} | {row['merge_s']} |"
            )
        median = statistics.median(row["ratio"] for row in rounds)
        print(f"| {count} | median | | | **{median:.2f}** | | | | | |")


if __name__ == "__main__":
    sys.exit(main())
