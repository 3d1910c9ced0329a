"""What Prometheus costs to start: locally (ready time and memory, a fresh Prometheus process
and data folder each round) and, with --cluster, installed on the single-node cluster.

    DOGS_CATS_PROMETHEUS_BINARY=.cluster/bin/prometheus .venv/bin/python -m benchmarks.prometheus [--cluster]

Prints a Markdown table for benchmarks/README.md. Locally it scrapes 127.0.0.1:1 (nothing
listens there): only its own start is measured. --cluster brings `make cluster`'s node up,
installs Prometheus as `python -m cluster platform` does (the image pushed, applied, ready)
and takes the node down again.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from core.settings import Environment
from deploy.monitoring import LocalPrometheus, local_scrape
from harness.serving import free_port


def local_start(binary: str) -> tuple[float, float]:
    """(seconds until /-/ready answers, resident MiB then) for one fresh Prometheus."""
    with tempfile.TemporaryDirectory() as home:
        prometheus = LocalPrometheus(Path(home), binary, free_port())
        started = time.perf_counter()
        prometheus.start(local_scrape("127.0.0.1:1"))
        ready = time.perf_counter() - started
        pid = prometheus.process().pid()
        assert pid is not None
        rss = psutil.Process(pid).memory_info().rss / 2**20
        prometheus.stop()
    return ready, rss


def cluster_install() -> float:
    from cluster.node import node_from_environment
    from cluster.platform_setup import install_monitoring

    node = node_from_environment()
    node.up()
    try:
        started = time.perf_counter()
        install_monitoring(node)
        return time.perf_counter() - started
    finally:
        node.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="also time the install on the cluster")
    args = parser.parse_args(argv)
    binary = Environment().prometheus_binary
    print("| what | seconds | resident MiB |\n|---|---|---|")
    for round_ in range(1, args.rounds + 1):
        ready, rss = local_start(binary)
        print(f"| local start, round {round_} | {ready:.2f} | {rss:.0f} |")
    if args.cluster:
        print(f"| cluster install (image pushed, applied, ready) | {cluster_install():.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
