"""The single-node cluster for tests: started by the test, stopped whatever happens."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from cluster.docker import DockerEngine, build_and_push, triton_cpu_runtime
from cluster.node import CHAIN_PREFIXES, Node, node_from_environment
from cluster.platform_setup import ClusterImages, build_images
from core.constants import MODEL_NAME
from pipeline.stack import wait_for


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


# pytest-timeout's 900 s counts a test's fixtures too, and the first test of a session to ask for
# project_images builds them cold: 13.5 minutes with the cluster's start on a busy 2-core machine
# (2026-12-07), which timed that test out. Modules that ask for them bound each test by this.
IMAGE_BUILDING_TIMEOUT_S = 1800


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


class Hammer:
    """A client calling the Service in a loop, recording each failure and the version that answered."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures: list[str] = []
        self.versions_seen: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Hammer:
        self._thread.start()
        wait_for("the first answer", lambda: self.answered > 0 or bool(self.failures), 60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        """Alternates a kept-alive connection, which stays on one pod until that pod exits, with
        a new connection per call, which follows the Service's endpoints as they change."""
        from client.triton import Triton, classify, model_info

        kept = Triton(self.url, "http", timeout_s=10)
        info = model_info(kept, MODEL_NAME)
        images = np.zeros((2, info.image_size, info.image_size, 3), dtype=np.uint8)
        new_connection = False
        while not self._stop.is_set():
            triton = Triton(self.url, "http", timeout_s=10) if new_connection else kept
            try:
                (version,) = triton.served_versions(MODEL_NAME)[-1:]
                answers = classify(triton, info, images)
                assert len(answers) == 2
                self.answered += 1
                if not self.versions_seen or self.versions_seen[-1] != version:
                    self.versions_seen.append(version)
            except Exception as failure:
                kind = "new" if new_connection else "kept-alive"
                # str(): tritonclient's exceptions keep their message out of repr().
                self.failures.append(
                    f"{time.strftime('%X')} ({kind} connection): {type(failure).__name__}: {failure}"
                )
                if not new_connection:
                    kept.close()
                    kept = Triton(self.url, "http", timeout_s=10)
            finally:
                if new_connection:
                    triton.close()
            new_connection = not new_connection
            time.sleep(0.05)
        kept.close()
