"""`python -m deploy {status,stop}`: manage the local tritonserver the DAG left running."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from core.settings import Environment
from deploy.local_triton import server_from_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy")
    parser.add_argument("command", choices=["status", "stop"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = server_from_environment(Environment())
    if args.command == "status":
        state = server.state()
        print(json.dumps(asdict(state), indent=2) if state else "no local tritonserver is running")
        return 0 if state else 1
    print("stopped" if server.stop() else "no local tritonserver was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
