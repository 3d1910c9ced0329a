"""`python -m deploy {serve,status,stop}`: manage the local tritonserver the DAG deploys to.

`serve` starts it again (after a reboot, say) on the repository last deployed,
or the one given, with the newest version of each model; `status` shows the
server and what it serves.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from core.settings import Environment
from deploy.local_triton import TritonError, serve, served_models, server_from_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy")
    parser.add_argument("command", choices=["serve", "status", "stop"])
    parser.add_argument(
        "--repository",
        default="",
        help="serve: a model repository (folder or gs://); default: the last deployed",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    environment = Environment()
    server = server_from_environment(environment)
    if args.command == "serve":
        try:
            served = serve(environment, args.repository)
        except TritonError as exc:
            parser.exit(1, f"{exc}\n")
        print(f"serving {served} on http://127.0.0.1:{environment.triton_http_port}")
        return 0
    if args.command == "status":
        state = server.state()
        if state is None:
            print("no local tritonserver is running")
            return 1
        print(json.dumps({**asdict(state), "models": served_models(state)}, indent=2))
        return 0
    print("stopped" if server.stop() else "no local tritonserver was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
