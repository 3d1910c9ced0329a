"""The single-node cluster for tests: started by the test, stopped whatever happens."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cluster.node import Node, node_from_environment


@contextmanager
def running_cluster() -> Iterator[Node]:
    """`make cluster`'s node (binaries from cluster/build.sh), brought up and then down."""
    node = node_from_environment()
    if any(node.status().values()):
        pytest.fail(f"a cluster from {node.root} is already running: make cluster-down first")
    try:
        node.up()
        yield node
    finally:
        node.down()


def kubectl(
    node: Node, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={node.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result
