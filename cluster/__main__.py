"""`python -m cluster {up,down,status,platform}`: the single-node cluster of `make cluster`.

`platform` readies the running cluster for the kubernetes platform (its images
in the registry, the namespace, Prometheus, KEDA, a bucket on its GCS emulator) and writes the
settings Airflow runs with to `--env-file`, for `make demo PLATFORM=kubernetes`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cluster.node import ClusterError, Node, node_from_environment
from core.cli import reports_errors


@reports_errors("python -m cluster")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "platform"])
    parser.add_argument("--env-file", type=Path, help="platform: where to write the settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    node = node_from_environment()
    if args.command == "up":
        try:
            node.up()
        except ClusterError as failure:
            if not any(node.status().values()):
                raise
            raise ClusterError(f"{failure}\nstop what started with: make cluster-down") from failure
        connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(node.kubeconfig)}}
        print(
            f"cluster up: . {node.env_file} && kubectl get nodes  (the cluster's own kubectl)\n"
            f"Airflow's connection: export AIRFLOW_CONN_KUBERNETES_DEFAULT='{json.dumps(connection)}'"
        )
        return 0
    if args.command == "platform":
        if args.env_file is None:
            parser.error("platform needs --env-file")
        return _ready_platform(node, args.env_file)
    if args.command == "status":
        print(json.dumps(node.status(), indent=2))
        return 0
    stopped = node.down()
    print(
        f"stopped {', '.join(stopped) or 'nothing'}; mounts left under {node.run}: {node.mounts() or 'none'}"
    )
    return 0


def _ready_platform(node: Node, env_file: Path) -> int:
    from cluster.docker import DockerEngine
    from cluster.platform_setup import (
        DEMO_BUCKET,
        build_images,
        create_bucket,
        env_file_text,
        install_autoscaling,
        install_monitoring,
        kubernetes_environment,
        prepare_namespace,
    )

    if node.pid("kube-apiserver") is None:
        raise ClusterError("the cluster is not running: make cluster")
    with DockerEngine.for_node(node).started() as engine:
        images = build_images(node, engine)
    prepare_namespace(node)
    prometheus = install_monitoring(node)
    install_autoscaling(node)
    bucket = create_bucket(DEMO_BUCKET)
    env_file.write_text(env_file_text(kubernetes_environment(node, images, prometheus)))
    print(f"images {images}; bucket {bucket}; Prometheus {prometheus}; settings in {env_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
