"""`python -m deploy {serve,status,stop,manifests,unpack-context}`: the served model.

`serve` starts the local tritonserver again (after a reboot, say) on the
repository last deployed, or the one given, with the newest version of each
model; `status` shows the server and what it serves. `manifests --image REF
--model-version N` prints, as YAML, what the kubernetes deploy task applies for
the current DOGS_CATS_* settings (`... | kubectl diff -f -`). `unpack-context
URI FOLDER` is the cluster path's image build pod fetching its build context.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from core.cli import reports_errors
from core.constants import MODEL_NAME
from core.settings import Environment
from deploy.local_triton import serve, server_from_environment


@reports_errors("python -m deploy")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy")
    parser.add_argument("command", choices=["serve", "status", "stop", "manifests", "unpack-context"])
    parser.add_argument("context", nargs="*", help="unpack-context: the context's URI and a folder")
    parser.add_argument(
        "--repository",
        default="",
        help="serve: a model repository (folder or gs://); default: the last deployed",
    )
    parser.add_argument("--image", help="manifests: the Triton image the Deployment runs")
    parser.add_argument("--model-version", type=int, help="manifests: the model version that image serves")
    parser.add_argument("--model", default=MODEL_NAME, help="manifests: the model's name")
    args = parser.parse_args(argv)
    if args.command == "manifests":
        if not args.image or args.model_version is None:
            parser.error("manifests takes --image and --model-version")
        print(manifests_yaml(Environment(), args.image, args.model, args.model_version), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "unpack-context":
        from triton_image.context import unpack_build_context

        if len(args.context) != 2:
            parser.error("unpack-context takes the context's URI and a folder")
        names = unpack_build_context(args.context[0], Path(args.context[1]))
        print(f"unpacked {len(names)} files from {args.context[0]} into {args.context[1]}")
        return 0
    environment = Environment()
    server = server_from_environment(environment)
    if args.command == "serve":
        served = serve(environment, args.repository)
        print(f"serving {served} on http://127.0.0.1:{environment.triton_http_port}")
        return 0
    if args.command == "status":
        state = server.state()
        if state is None:
            print("no local tritonserver is running")
            return 1
        print(json.dumps({**asdict(state), "models": server.served_models(state)}, indent=2))
        return 0
    print("stopped" if server.stop() else "no local tritonserver was running")
    return 0


def manifests_yaml(environment: Environment, image: str, model_name: str, model_version: int) -> str:
    """The serving manifests as the deploy task applies them, as YAML documents in apply order."""
    import yaml

    from deploy.kubernetes import ServingSpec, retired_manifests, serving_manifests

    spec = ServingSpec.from_environment(
        environment, image=image, model_name=model_name, model_version=model_version
    )
    retired = ", ".join(f"{m['kind']}/{m['metadata']['name']}" for m in retired_manifests(spec))
    header = (
        f"# What the deploy task server-side applies, in this order. It first creates, if absent,\n"
        f"# Secret/{spec.admin_secret} (a random key for Triton's control APIs)"
    )
    header += f", and deletes, if present: {retired}\n" if retired else "\n"
    return header + yaml.safe_dump_all(serving_manifests(spec), sort_keys=False, explicit_start=True)


if __name__ == "__main__":
    sys.exit(main())
