"""The single-node cluster for tests: started by the test, stopped whatever happens."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cluster.docker import DockerEngine
from cluster.node import Node, node_from_environment
from cluster.platform_setup import ClusterImages, build_images


@contextmanager
def running_cluster() -> Iterator[Node]:
    """`make cluster`'s node (binaries from cluster/build.sh), brought up empty and then down."""
    node = node_from_environment()
    if any(node.status().values()):
        pytest.fail(f"a cluster from {node.root} is already running: make cluster-down first")
    node.forget_objects()  # what an earlier run left in etcd or the bucket would leak into this one
    try:
        node.up()
        yield node
    finally:
        node.down()


@functools.cache
def project_images(node: Node) -> ClusterImages:
    """The kubernetes platform's images, built from this checkout once per test session; the
    registry keeps them while later test modules restart the cluster."""
    with DockerEngine(node.root / "docker").started() as engine:
        return build_images(node, engine, training_tag="test")


def kubectl(
    node: Node, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = node.kubectl(*args, stdin=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result
