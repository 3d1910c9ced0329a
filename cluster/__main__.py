"""`python -m cluster {up,down,status}`: the single-node cluster of `make cluster`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cluster.node import ClusterError, node_from_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    node = node_from_environment()
    if args.command == "up":
        try:
            node.up()
        except ClusterError as failure:
            print(f"{failure}\nstop what started with: make cluster-down", file=sys.stderr)
            return 1
        connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(node.kubeconfig)}}
        print(
            f"cluster up: kubectl --kubeconfig {node.kubeconfig} get nodes\n"
            f"Airflow's connection: export AIRFLOW_CONN_KUBERNETES_DEFAULT='{json.dumps(connection)}'"
        )
        return 0
    if args.command == "status":
        print(json.dumps(node.status(), indent=2))
        return 0
    stopped = node.down()
    print(
        f"stopped {', '.join(stopped) or 'nothing'}; mounts left under {node.run}: {node.mounts() or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
