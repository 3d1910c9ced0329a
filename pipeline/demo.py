"""`make demo`: run the dogs_cats DAG once on this machine, as its users run it, and say where things are.

Brings up Airflow (`pipeline.stack`: api-server, scheduler, dag-processor,
triggerer), triggers the run through the REST API with the conf, follows it as
a per-task progress view, then prints the run's UI link, the report and how to
call the model that Triton keeps serving. Airflow and Triton keep running
until `make stop`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.cli import reports_errors
from core.settings import Environment, join_uri
from pipeline.stack import StackError, follow, login_banner, monitoring_banner, stack_from_environment

DAG_ID = "dogs_cats"


@reports_errors("python -m pipeline.demo")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo")
    parser.add_argument(
        "--source",
        default="",
        help="the dataset: http(s) zip, folder or gs:// prefix; empty: the Param's default",
    )
    parser.add_argument("--bucket", required=True, help="default data_bucket")
    parser.add_argument("--conf", default="{}", help="other DAG params as JSON")
    args = parser.parse_args(argv)
    try:
        extra = json.loads(args.conf or "{}")
    except json.JSONDecodeError as exc:
        parser.error(f"CONF is not JSON: {exc}")
    if not isinstance(extra, dict):
        parser.error("CONF must be a JSON object, e.g. CONF='{\"max_images_per_class\": 500}'")
    conf = {"data_bucket": args.bucket, **extra}
    if args.source:
        conf["source"] = args.source if "://" in args.source else str(Path(args.source).resolve())

    stack = stack_from_environment()
    print(f"starting Airflow on {stack.base_url} (logs: {stack.log_file})", flush=True)
    stack.start()
    stack.wait_for_dag(DAG_ID)
    print(login_banner(stack), flush=True)
    print(monitoring_banner(), flush=True)
    api = stack.api()
    try:
        run_id = api.trigger(DAG_ID, conf)
    except StackError as refused:
        print(f"{refused}\nnothing ran; fix CONF and run make demo again", file=sys.stderr)
        return 2
    print(f"triggered {DAG_ID} with conf {json.dumps(conf)}\n  {stack.run_url(DAG_ID, run_id)}", flush=True)
    state = follow(api, DAG_ID, run_id)
    print(f"the run in the UI: {stack.run_url(DAG_ID, run_id)}")
    if state != "success":
        print("the run failed: open the link above for each task's log", file=sys.stderr)
        return 1
    return _summarise(conf["data_bucket"], run_id)


def _summarise(bucket: str, run_id: str) -> int:
    from core import storage
    from core.constants import MODEL_NAME
    from core.settings import safe_name
    from pipeline.platforms import platform_for

    predictions = join_uri(bucket, "predictions", safe_name(run_id))
    report_uri = join_uri(predictions, "report.json")
    if not storage.exists(report_uri):
        print(f"no report at {report_uri}")
        return 0
    report = json.loads(storage.read_text(report_uri))
    endpoint = platform_for(Environment()).served_endpoint(MODEL_NAME)
    print(
        f"""
Done. {report["succeeded"]} of {report["images"]} images classified; labels {report["label_distribution"]}, \
accuracy on the test split {report.get("accuracy_by_folder", "n/a")}.
  predictions: {join_uri(predictions, "predictions.jsonl")}
  report:      {report_uri} and {join_uri(predictions, "report.html")} (open it in a browser)
Triton serves version {endpoint.version} of {endpoint.model_name} at {endpoint.url}:
  .venv/bin/python -m client --url {endpoint.url} predict path/to/image.jpg
  curl -s {endpoint.url}/v2/models/{endpoint.model_name}
Airflow and Triton keep running; stop both with: make stop"""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
