"""`python -m deploy {serve,status,stop,unpack-context}`: manage the local tritonserver the DAG deploys to.

`serve` starts it again (after a reboot, say) on the repository last deployed,
or the one given, with the newest version of each model; `status` shows the
server and what it serves. `unpack-context URI FOLDER` is the cluster path's
image build pod fetching its build context from the bucket.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from core.errors import reports_errors
from core.settings import Environment
from deploy.local_triton import serve, served_models, server_from_environment


@reports_errors("python -m deploy")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy")
    parser.add_argument("command", choices=["serve", "status", "stop", "unpack-context"])
    parser.add_argument("context", nargs="*", help="unpack-context: the context's URI and a folder")
    parser.add_argument(
        "--repository",
        default="",
        help="serve: a model repository (folder or gs://); default: the last deployed",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "unpack-context":
        from deploy.image import unpack_build_context

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
        print(json.dumps({**asdict(state), "models": served_models(state)}, indent=2))
        return 0
    print("stopped" if server.stop() else "no local tritonserver was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
