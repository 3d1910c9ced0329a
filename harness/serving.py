"""Real local servers for tests and benchmarks, each on free ports and stopped afterwards."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.constants import MODEL_NAME, ensemble_name
from core.settings import ServingPrecision
from deploy.local_triton import LocalTriton
from model_repository.repository import RepositoryVersion, package_model


def free_port() -> int:
    """A port nothing listens on now, on the loopback address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving_model_folder(
    model_uri: str,
    work: Path,
    *,
    max_batch_size: int = 8,
    instances: int = 1,
    ort_threads: int = 0,
    precision: ServingPrecision = "auto",
) -> Iterator[tuple[LocalTriton, RepositoryVersion]]:
    """A model folder packaged into its own repository and served by a real local
    tritonserver on free ports, classifier and JPEG ensemble loaded; stopped afterwards."""
    name = f"{Path(model_uri).name}-{instances}x{ort_threads}-{precision}"
    version = package_model(
        model_uri,
        str(work / f"repository-{name}"),
        flavour="python",
        model_name=MODEL_NAME,
        max_batch_size=max_batch_size,
        precision=precision,
        instances=instances,
        ort_threads=ort_threads,
    )
    server = LocalTriton(
        work / f"state-{name}", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    state = server.ensure_running(work / f"repository-{name}", timeout_s=120)
    try:
        server.load(state, MODEL_NAME, timeout_s=300)
        server.load(state, ensemble_name(MODEL_NAME), timeout_s=300)
        yield server, version
    finally:
        server.stop()
