"""`python -m client predict IMAGE...` and `python -m client batch --input ... --output ...`.

Exit codes: 0 all classified, 1 some images failed (each reason is reported),
2 Triton unreachable or the run refused (nothing already written is lost).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tritonclient.utils import InferenceServerException

from client.batch import BatchOptions, InputChanged, RetryPolicy, TritonUnavailable, run_batch
from client.triton import (
    DEFAULT_PORTS,
    MODEL_NAME,
    PROTOCOLS,
    Triton,
    classify,
    classify_encoded,
    is_refusal,
    model_info,
)
from core.cli import reports_errors
from core.errors import ProjectError
from core.images import ImageDecodeError, decode_rgb
from core.policy import access_policy
from core.settings import Environment


@reports_errors("python -m client")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client")
    parser.add_argument("--url", help="Triton host:port (default 127.0.0.1:8000 for http, :8001 for grpc)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--timeout", type=float, default=60.0, help="connection and network timeout, seconds")
    parser.add_argument(
        "--encoded", action="store_true", help="send file bytes to the <model>_jpeg ensemble (server decodes)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify image files")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--top-k", type=int, default=1)
    predict.add_argument("--json", action="store_true", help="one JSON object per image")

    batch = commands.add_parser("batch", help="classify every image under a folder or gs:// prefix")
    batch.add_argument("--input", required=True, help="folder or gs://bucket/prefix of images")
    batch.add_argument("--output", required=True, help="folder or gs://bucket/prefix for predictions")
    batch.add_argument("--concurrency", type=int, default=4, help="requests in flight (worker threads)")
    batch.add_argument(
        "--batch-size", type=int, default=0, help="images per request (default: the model's preferred batch)"
    )
    batch.add_argument("--retries", type=int, default=6, help="attempts per request while Triton is down")
    batch.add_argument("--no-progress", action="store_true")

    args = parser.parse_args(argv)
    args.url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "predict":
            return _predict(args)
        return _batch(args)
    except TritonUnavailable as exc:
        raise ProjectError(f"Triton at {args.url} is unavailable: {exc}") from exc
    except (InputChanged, ValueError) as exc:
        raise ProjectError(str(exc)) from exc
    except (InferenceServerException, ConnectionError, OSError) as exc:
        raise ProjectError(f"cannot reach Triton at {args.url}: {exc}") from exc


def _batch(args: argparse.Namespace) -> int:
    policy = access_policy(Environment())
    policy.check_location("--input", args.input)
    policy.check_location("--output", args.output)
    options = BatchOptions(
        model_name=args.model,
        protocol=args.protocol,
        encoded=args.encoded,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        timeout_s=args.timeout,
        retry=RetryPolicy(attempts=args.retries),
        progress=not args.no_progress,
    )
    # Folders named after the model's labels are ground truth, as in the DAG's batch stage.
    report = run_batch(args.url, args.input, args.output, options, score_served_labels=True)
    keys = ("images", "succeeded", "failed", "accuracy_by_folder", "images_per_second", "label_distribution")
    summary = {key: report[key] for key in keys if key in report}
    print(json.dumps({**summary, "files_left_out": report["left_out"]["files"]}))
    return 1 if report["failed"] else 0


def _predict(args: argparse.Namespace) -> int:
    triton = Triton(args.url, args.protocol, args.timeout)
    info = model_info(triton, args.model)
    top_k = min(args.top_k, info.num_classes)
    failed = 0
    for path in args.images:
        try:
            data = path.read_bytes()
            if args.encoded:
                (top,) = classify_encoded(triton, args.model, [data], top_k=top_k)
            else:
                (top,) = classify(triton, info, decode_rgb(data, info.image_size)[None], top_k=top_k)
        except (ImageDecodeError, OSError) as exc:
            reason = str(exc)
        except InferenceServerException as exc:
            if not is_refusal(exc):
                raise
            reason = exc.message() or str(exc)
        else:
            if args.json:
                print(json.dumps({"image": str(path), "predictions": [p.__dict__ for p in top]}))
            else:
                print(f"{path}: " + ", ".join(f"{p.label} {p.confidence:.1%}" for p in top))
            continue
        failed += 1
        print(json.dumps({"image": str(path), "error": reason}) if args.json else f"{path}: error: {reason}")
    triton.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
