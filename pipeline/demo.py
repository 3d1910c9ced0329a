"""`make demo`: run the dogs_cats DAG once on this machine and say where things are.

Runs `airflow dags test` (the DAG in-process, recorded in the metadata DB so
`airflow standalone` shows it afterwards), then prints the report and how to
call the model that is still being served.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from core.settings import Environment, join_uri


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

    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
    print(f"running dogs_cats with conf {json.dumps(conf)}", flush=True)
    result = subprocess.run([airflow, "dags", "test", "dogs_cats", "--conf", json.dumps(conf)])
    if result.returncode != 0:
        print("the DAG run failed; see the task logs above", file=sys.stderr)
        return result.returncode
    return _summarise(conf["data_bucket"])


def _summarise(bucket: str) -> int:
    reports = sorted(Path(join_uri(bucket, "predictions")).glob("*/report.json"), key=os.path.getmtime)
    if not reports:
        print(f"no report under {bucket}/predictions (is data_bucket remote?)")
        return 0
    report_path = reports[-1]
    report = json.loads(report_path.read_text())
    port = Environment().triton_http_port
    print(
        f"""
Done. {report["succeeded"]} of {report["images"]} images classified; labels {report["label_distribution"]}, \
accuracy on the validation split {report.get("accuracy_by_folder", "n/a")}.
  predictions: {report_path.with_name("predictions.jsonl")}
  report:      {report_path} and {report_path.with_name("report.html")} (open it in a browser)
Triton is still serving on 127.0.0.1:{port}:
  .venv/bin/python -m client predict path/to/image.jpg
  curl -s 127.0.0.1:{port}/v2/models/dogs_cats
Stop it with: make stop"""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
