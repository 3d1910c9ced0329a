"""Shared fixtures: generated images, a trained and a served model, an isolated Airflow home.

Helpers that tests and benchmarks share live in `harness`; only fixtures live here.

Airflow reads its configuration when first imported, so the environment it
needs is set here, before any test module imports it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.data import REPO_ROOT, write_images
from harness.serving import free_port, serving_model_folder

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="dogs-cats-airflow-"))
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)  # each session used to leave one behind
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # What a run's conf may name in these tests: their temporary folders and the repository's
        # shipped images; downloads from the tests' own HTTP servers on loopback.
        "DOGS_CATS_ALLOWED_ROOTS": json.dumps([tempfile.gettempdir(), str(REPO_ROOT)]),
        "DOGS_CATS_ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8", "::1/128"]),
    }
)
# The Prometheus `make` builds (cluster/build.sh), unless the caller names another.
os.environ.setdefault(
    "DOGS_CATS_PROMETHEUS_BINARY",
    str(Path(os.environ.get("DOGS_CATS_CLUSTER_DIR", REPO_ROOT / ".cluster")) / "bin" / "prometheus"),
)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_images(tmp_path / "source", per_class=12)


@pytest.fixture(scope="session")
def session_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"), per_class=20)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, session_images: Path) -> str:
    """A small model trained once per session on generated images (model folder URI)."""
    from training.job import TrainingJob
    from training.staging import StagingOptions, stage_dataset
    from training.train import train

    bucket = tmp_path_factory.mktemp("bucket")
    dataset_uri = str(bucket / "datasets" / "generated")
    stage_dataset(
        str(session_images),
        dataset_uri,
        StagingOptions(val_fraction=0.25, test_fraction=0.25),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    model_uri = str(bucket / "models" / "session")
    train(
        TrainingJob(
            model="small",
            dataset_uri=dataset_uri,
            output_uri=model_uri,
            image_size=32,
            epochs=2,
            batch_size=8,
        )
    )
    return model_uri


@pytest.fixture
def server_ports() -> dict[str, int]:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory, trained_model: str) -> Iterator[dict]:
    """The session's model served by a real local tritonserver (stopped afterwards).

    Its max_batch_size, 16, is above the CPU batch of 8 the server prefers, so a client that
    took the max for the preferred batch would show."""
    serving = tmp_path_factory.mktemp("serving")
    with serving_model_folder(trained_model, serving, max_batch_size=16) as (server, version):
        state = server.state()
        assert state is not None
        yield {
            "url": state.http_url,
            "grpc_url": f"127.0.0.1:{state.grpc_port}",
            "model_uri": trained_model,
            "version": version,
            "server": server,
        }
