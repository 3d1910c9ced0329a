"""A real Airflow stack (pipeline.stack) for tests, on free ports, stopped whatever happens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.processes import group_running
from core.settings import Environment
from deploy.local_triton import server_from_environment
from deploy.monitoring import prometheus_from_environment, start_local_prometheus
from harness.data import REPO_ROOT
from harness.serving import free_port
from pipeline.plan import RunPlan
from pipeline.stack import FINISHED, AirflowApi, AirflowStack, wait_for


@contextmanager
def running_stack(
    root: Path, environment: dict[str, str] | None = None, *, prometheus: bool = False
) -> Iterator[AirflowStack]:
    """Airflow with its home, Triton state and ports under `root`; `environment` adds DOGS_CATS_* settings;
    `prometheus` starts the local Prometheus beside it, as `make up` does.

    On the way out it stops Airflow (SIGINT to its process group), the
    tritonserver its deploy tasks started and Prometheus."""
    triton = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    settings = Environment(
        state_dir=root / "state",
        triton_http_port=triton["http_port"],
        triton_grpc_port=triton["grpc_port"],
        triton_metrics_port=triton["metrics_port"],
        prometheus_port=free_port(),
    )
    stack = AirflowStack(
        home=root / "airflow",
        dags_folder=REPO_ROOT / "dags",
        port=free_port(),
        extra_env={
            "DOGS_CATS_STATE_DIR": str(settings.state_dir),
            **{f"DOGS_CATS_TRITON_{name.upper()}": str(port) for name, port in triton.items()},
            "DOGS_CATS_PROMETHEUS_PORT": str(settings.prometheus_port),
            **(environment or {}),
        },
    )
    try:
        stack.start()
        if prometheus:
            start_local_prometheus(settings)
        yield stack
    finally:
        groups = list(stack.running().values())
        stack.stop()
        server_from_environment(settings).stop()
        prometheus_from_environment(settings).stop()
        outlived = [group for group in groups if group_running(group)]
        if outlived:
            raise AssertionError(f"Airflow's process groups {outlived} outlived stop()")


def stored_plan(api: AirflowApi, run_id: str) -> RunPlan | None:
    """The run's plan as the plan task stored it (Airflow's pydantic serialisation), or None
    while the plan has not run."""
    path = f"/api/v2/dags/dogs_cats/dagRuns/{run_id}/taskInstances/plan/xcomEntries/return_value"
    status, entry = api.request("GET", path)
    if status != 200:
        return None
    stored = json.loads(entry["value"]) if isinstance(entry["value"], str) else entry["value"]
    assert stored["__classname__"] == "pipeline.plan.RunPlan", stored
    return RunPlan.model_validate(stored["__data__"])


def wait_until_finished(api: AirflowApi, dag_id: str, run_id: str, timeout_s: float) -> dict[str, Any]:
    """The run once it has succeeded or failed."""

    def finished() -> dict[str, Any] | None:
        run = api.dag_run(dag_id, run_id)
        return run if run["state"] in FINISHED else None

    run: dict[str, Any] = wait_for(f"{dag_id} run {run_id} to finish", finished, timeout_s, 5)
    return run
