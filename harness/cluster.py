"""The single-node cluster for tests: started by the test, stopped whatever happens."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cluster.docker import DockerEngine, build_and_push, triton_cpu_runtime
from cluster.node import CHAIN_PREFIXES, Node, node_from_environment
from cluster.platform_setup import ClusterImages, build_images


@contextmanager
def running_cluster() -> Iterator[Node]:
    """`make cluster`'s node (binaries from cluster/build.sh), brought up empty and then down."""
    node = node_from_environment()
    if any(node.status().values()):
        pytest.fail(f"a cluster from {node.root} is already running: make cluster-down first")
    # What an earlier run left in etcd or the bucket would leak into this one: drop both, keeping
    # the certificates and the registry's images.
    for folder in ("etcd", "gcs"):
        shutil.rmtree(node.run / folder, ignore_errors=True)
    try:
        node.up()
        yield node
    finally:
        node.down()


@functools.cache
def project_images(node: Node) -> ClusterImages:
    """The kubernetes platform's images, built from this checkout once per test session; the
    registry keeps them while later test modules restart the cluster."""
    with DockerEngine.for_node(node).started() as engine:
        return build_images(node, engine, training_tag="test")


def kubectl(
    node: Node, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = node.kubectl(*args, stdin=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result


def triton_cpu_image(engine: DockerEngine, cache: Path, model_repository: Path, tag: str) -> str:
    """The CPU Triton image serving `model_repository` (a python-flavour repository), pushed
    to the cluster's registry; returns the reference the cluster pulls."""
    runtime = triton_cpu_runtime(engine, cache)
    with tempfile.TemporaryDirectory(dir=engine.root) as scratch:
        context = Path(scratch)
        shutil.copytree(
            model_repository, context / "model_repository", ignore=shutil.ignore_patterns("__pycache__")
        )
        return build_and_push(
            engine,
            context,
            "packaging/Dockerfile.cpu",
            f"dogs-cats-triton-cpu:{tag}",
            {"RUNTIME_IMAGE": runtime},
        )


def cluster_chains() -> list[str]:
    """The cluster's chains left in any table (IPv4 and IPv6)."""
    found = []
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listed = subprocess.run([binary, "-t", table, "-S"], capture_output=True, text=True).stdout
            found += [
                f"{binary} {table} {line.split()[1]}"
                for line in listed.splitlines()
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            ]
    return found
