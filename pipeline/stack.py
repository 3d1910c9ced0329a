"""Airflow as it runs on one machine, started, stopped and driven over REST.

`make up`, `make demo` and `make stop` use this module, and so do the tests
that run the DAGs under the real scheduler: the same start-up, the same REST
calls a user makes, the same shutdown.

It runs what `airflow standalone` runs (the api-server, scheduler,
dag-processor and triggerer, LocalExecutor, the simple auth manager), each a
supervised process of its own, so that each listens only where it should:
standalone starts the scheduler's and the triggerer's log servers on every
address ([::]:8793, [::]:8794), with no setting to bind them, while on one
machine the api-server reads task logs from the files themselves. Each
component is stopped with SIGINT to its process group (SIGTERM would orphan
the LocalExecutor's workers), and SIGKILL after a grace period.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from core import processes
from core.errors import ProjectError
from core.keys import secret_file
from core.settings import Environment

AIRFLOW = Path(sys.executable).with_name("airflow")
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
LOG_FILE = "airflow.log"  # every component's output, appended
JWT_SECRET_FILE = "jwt_secret"  # mode 0600, made once per Airflow home
# The components, as standalone starts them, less the log servers (see the module's docstring).
COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
USERNAME = "admin"  # the simple auth manager's generated admin, the only login the local stack has
FINISHED = frozenset({"success", "failed"})


T = TypeVar("T")


class StackError(ProjectError, RuntimeError):
    """Airflow refused what was asked of it, or did not answer in time; the message says why."""


class StackExited(ProjectError, RuntimeError):
    """A component of the stack died while starting; the message carries the log's tail."""


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float, interval_s: float = 2.0) -> T:
    """Poll `check` until it returns something truthy; Airflow's API failing while polling
    (not up yet, a 404 before the dag-processor has parsed) counts as not yet."""
    return processes.wait_for(
        what,
        check,
        timeout_s,
        interval_s=interval_s,
        tolerate=(OSError, urllib.error.URLError, StackError),
        error=StackError,
    )


@dataclass
class AirflowApi:
    """The REST API (`/api/v2`) with a bearer token from the simple auth manager's admin."""

    base_url: str
    password: Callable[[], str]
    _token: str = field(default="", repr=False)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if not self._token and path != "/auth/token":
            status, answer = self.request(
                "POST", "/auth/token", {"username": USERNAME, "password": self.password()}
            )
            if status not in (200, 201):
                raise StackError(f"Airflow refused the login: {status} {answer}")
            self._token = answer["access_token"]
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def get(self, path: str) -> Any:
        status, answer = self.request("GET", path)
        if status != 200:
            raise StackError(f"GET {path}: {status} {answer}")
        return answer

    def healthy(self) -> bool:
        status, _ = self.request("GET", "/api/v2/monitor/health")
        return status == 200

    def unpause(self, dag_id: str) -> None:
        status, answer = self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        if status != 200:
            raise StackError(f"could not unpause {dag_id}: {status} {answer}")

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """A manual run with `conf`; a conf the DAG's Params refuse raises with Airflow's reason."""
        status, answer = self.request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        if status != 200:
            detail = answer.get("detail") if isinstance(answer, dict) else answer
            raise StackError(f"Airflow refused the run ({status}): {detail}")
        run_id: str = answer["dag_run_id"]
        return run_id

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        return run

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        found = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")
        return list(found["task_instances"])


@dataclass
class AirflowStack:
    """Airflow's four components with their home, port and DAGs folder."""

    home: Path
    dags_folder: Path
    port: int = 8080
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # What standalone sets: one machine, its own processes, the simple auth manager.
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            # 2 cores: fewer worker processes, less memory (~1 GB for the whole stack).
            "AIRFLOW__CORE__PARALLELISM": "4",
            # The scheduler starts a task's successors on its next loop; idle, it sleeps 1 s
            # between loops by default, which the batch stage paid at each of its three steps
            # (benchmarks/README.md, the batch stage under the live scheduler).
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            # A new DAG runs when triggered, from the UI or the CLI, without a trip to unpause it.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            # HS512 signs with it: 64 random bytes, the algorithm's own size (Airflow warns under it).
            "AIRFLOW__API_AUTH__JWT_SECRET": secret_file(self.home / JWT_SECRET_FILE, 64),
            **self.extra_env,
        }

    @property
    def log_file(self) -> Path:
        return self.home / LOG_FILE

    def api(self) -> AirflowApi:
        return AirflowApi(self.base_url, self.password)

    def password(self) -> str:
        passwords = json.loads((self.home / PASSWORDS_FILE).read_text())
        password: str = passwords[USERNAME]
        return password

    def components(self) -> dict[str, processes.Supervised]:
        return {
            name: processes.Supervised(f"airflow {name}", self.home / f"{name}.pid", self.log_file)
            for name in COMPONENTS
        }

    def running(self) -> dict[str, int]:
        """Each component still running from an earlier start, with its pid."""
        found = {name: process.pid() for name, process in self.components().items()}
        return {name: pid for name, pid in found.items() if pid is not None}

    def start(self, timeout_s: float = 240.0) -> None:
        """Migrate the metadata DB and start every component not running; wait for the API."""
        self.home.mkdir(parents=True, exist_ok=True)
        running = self.running()
        if not running:
            migrated = subprocess.run(
                [str(AIRFLOW), "db", "migrate"], env=self.env, capture_output=True, text=True
            )
            if migrated.returncode != 0:
                raise StackError(f"airflow db migrate failed:\n{migrated.stderr[-3000:]}")
        for name, process in self.components().items():
            if name not in running:
                process.start([str(AIRFLOW), *COMPONENTS[name]], env=self.env)
        api = self.api()

        def up() -> bool:
            return (self.home / PASSWORDS_FILE).exists() and api.healthy()

        def exited() -> str | None:
            gone = sorted(set(COMPONENTS) - set(self.running()))
            if not gone:
                return None
            return f"airflow {', '.join(gone)} exited; last lines of {self.log_file}:\n{self.tail()}"

        processes.wait_for(
            f"Airflow's API on {self.base_url}",
            up,
            timeout_s,
            interval_s=2.0,
            failed=exited,
            tolerate=(OSError, urllib.error.URLError, StackError),
            error=StackExited,
        )

    def tail(self) -> str:
        return next(iter(self.components().values())).tail(40)

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> None:
        """Wait until the dag-processor has parsed `dag_id`, then make sure it is unpaused."""
        api = self.api()
        wait_for(
            f"the DAG {dag_id} to be parsed",
            lambda: api.request("GET", f"/api/v2/dags/{dag_id}")[0] == 200,
            timeout_s,
        )
        api.unpause(dag_id)

    def stop(self, grace_s: float = 15.0) -> bool:
        """Each component: SIGINT to its process group, then SIGKILL to whatever of it is left
        after `grace_s` (the scheduler and triggerer may keep waiting on SIGINT; SIGTERM would
        orphan the LocalExecutor's workers). Processes a task started in a session of their
        own (the local tritonserver) are not in those groups. False when none was running."""
        stopped = [process.stop(grace_s, first=signal.SIGINT) for process in self.components().values()]
        return any(stopped)

    def run_url(self, dag_id: str, run_id: str) -> str:
        return f"{self.base_url}/dags/{dag_id}/runs/{urllib.parse.quote(run_id)}"


def stack_from_environment() -> AirflowStack:
    """The stack the Makefile configures: AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER, AIRFLOW__API__PORT."""
    return AirflowStack(
        home=Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")),
        dags_folder=Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", Path.cwd() / "dags")),
        port=int(os.environ.get("AIRFLOW__API__PORT", "8080")),
    )


def _task_key(instance: dict[str, Any]) -> str:
    index = instance.get("map_index", -1)
    return instance["task_id"] + (f"[{index}]" if index is not None and index >= 0 else "")


def progress_lines(api: AirflowApi, dag_id: str, run_id: str, poll_s: float = 2.0) -> Iterator[str]:
    """One line per change of a task's state or try, until the run finishes; the run's state last."""
    seen: dict[str, tuple[str, int]] = {}
    while True:
        run = api.dag_run(dag_id, run_id)
        for instance in sorted(
            api.task_instances(dag_id, run_id), key=lambda ti: ti.get("start_date") or "~"
        ):
            key, state, tries = _task_key(instance), instance["state"], instance["try_number"]
            if state is None or seen.get(key) == (state, tries):  # not scheduled yet
                continue
            seen[key] = (state, tries)
            duration = f"{instance['duration']:.1f} s" if instance.get("duration") else ""
            yield f"  {time.strftime('%H:%M:%S')}  {key:<22} {state:<16} {duration:>9}  try {tries}"
        if run["state"] in FINISHED:
            yield f"run {run_id}: {run['state']}"
            return
        time.sleep(poll_s)


def follow(api: AirflowApi, dag_id: str, run_id: str, out: TextIO = sys.stdout) -> str:
    """Print the compact progress view of a run; returns its final state."""
    state = ""
    for line in progress_lines(api, dag_id, run_id):
        print(line, file=out, flush=True)
        state = line.rsplit(" ", 1)[-1]
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "stop", "status"])
    args = parser.parse_args(argv)
    stack = stack_from_environment()
    if args.command == "up":
        stack.start()
        stack.wait_for_dag("dogs_cats")
        print(login_banner(stack))
        print(monitoring_banner())
        return 0
    if args.command == "status":
        running = stack.running()
        print(f"Airflow {running} on {stack.base_url}" if running else "Airflow is not running")
        return 0 if running else 1
    print("stopped Airflow" if stack.stop() else "Airflow was not running")
    from deploy.local_triton import server_from_environment
    from deploy.monitoring import prometheus_from_environment

    print(
        "stopped tritonserver"
        if server_from_environment(Environment()).stop()
        else "no tritonserver was running"
    )
    print(
        "stopped Prometheus"
        if prometheus_from_environment(Environment()).stop()
        else "no Prometheus was running"
    )
    return 0


def monitoring_banner() -> str:
    """Start the platform's Prometheus where this machine runs it, and say where it answers."""
    from pipeline.platforms import platform_for

    url = platform_for(Environment()).start_monitoring()
    if url is None:
        return "Prometheus: none named (DOGS_CATS_PROMETHEUS_URL)"
    return f"Prometheus: {url}  (queries: docs/serving.md#metrics)"


def login_banner(stack: AirflowStack) -> str:
    return (
        f"Airflow UI: {stack.base_url}  (login {USERNAME} / {stack.password()}; "
        f"the password is in {stack.home / PASSWORDS_FILE})\n"
        f"logs: {stack.log_file}; stop everything with: make stop"
    )


if __name__ == "__main__":
    sys.exit(main())
