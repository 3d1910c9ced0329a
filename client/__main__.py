"""`python -m client predict IMAGE...` and `python -m client batch --input ... --output ...`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.batch import TritonUnavailable, run_batch
from client.triton import DEFAULT_MODEL, classify, model_info
from pipeline.images import decode_rgb
from pipeline.settings import Environment


def main(argv: list[str] | None = None) -> int:
    default_url = f"127.0.0.1:{Environment().triton_http_port}"
    parser = argparse.ArgumentParser(prog="python -m client")
    parser.add_argument("--url", default=default_url, help=f"Triton HTTP host:port (default {default_url})")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify image files")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--top-k", type=int, default=1)
    predict.add_argument("--json", action="store_true", help="one JSON object per image")

    batch = commands.add_parser("batch", help="classify every image under a folder or gs:// prefix")
    batch.add_argument("--input", required=True)
    batch.add_argument("--output", required=True)
    batch.add_argument("--concurrency", type=int, default=4)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "predict":
            return _predict(args)
        report = run_batch(
            args.url, args.input, args.output, model_name=args.model, concurrency=args.concurrency
        )
        print(json.dumps({k: report[k] for k in ("images", "succeeded", "failed", "label_distribution")}))
        return 1 if report["failed"] else 0
    except TritonUnavailable as exc:
        print(f"error: Triton at {args.url} is unavailable: {exc}", file=sys.stderr)
        return 2
    except (InferenceServerException, ConnectionError, OSError) as exc:
        print(f"error: cannot reach Triton at {args.url}: {exc}", file=sys.stderr)
        return 2


def _predict(args: argparse.Namespace) -> int:
    client = httpclient.InferenceServerClient(args.url)
    info = model_info(client, args.model)
    failed = 0
    for path in args.images:
        try:
            image = decode_rgb(path.read_bytes(), info.image_size)
        except (ValueError, OSError) as exc:
            failed += 1
            print(
                json.dumps({"image": str(path), "error": str(exc)}) if args.json else f"{path}: error: {exc}"
            )
            continue
        (top,) = classify(client, info, image[None], top_k=min(args.top_k, info.num_classes))
        if args.json:
            print(json.dumps({"image": str(path), "predictions": [p.__dict__ for p in top]}))
        else:
            print(f"{path}: " + ", ".join(f"{p.label} {p.confidence:.1%}" for p in top))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
