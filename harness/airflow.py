"""A real Airflow stack (pipeline.stack) for tests, on free ports, stopped whatever happens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.processes import group_running
from deploy.local_triton import LocalTriton
from harness.data import REPO_ROOT
from harness.serving import free_port
from pipeline.plan import RunPlan
from pipeline.stack import AirflowApi, AirflowStack


@contextmanager
def running_stack(root: Path, **environment: str) -> Iterator[AirflowStack]:
    """Airflow with its home, Triton state and ports under `root`; `environment` adds DOGS_CATS_* settings.

    On the way out it stops Airflow (SIGINT to its process group) and the
    tritonserver its deploy tasks started."""
    triton = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    stack = AirflowStack(
        home=root / "airflow",
        dags_folder=REPO_ROOT / "dags",
        port=free_port(),
        extra_env={
            "DOGS_CATS_STATE_DIR": str(root / "state"),
            **{f"DOGS_CATS_TRITON_{name.upper()}": str(port) for name, port in triton.items()},
            **environment,
        },
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        LocalTriton(root / "state", **triton).stop()
        outlived = [group for group in stack.stopped_groups if group_running(group)]
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
