"""Stage 4 on one machine: the real tritonserver from the nvidia-pytriton wheel.

The server runs as a detached background process bound to 127.0.0.1 with
explicit model control, so it outlives the Airflow task that started it and a
new model version is loaded through the API while the old one keeps serving.
Its pid, ports and log path live in a state file that `python -m deploy`
(and `make stop`) read; the last version deployed is recorded beside it, so
`python -m deploy serve` brings the same models back after a reboot.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from core import storage
from core.constants import ADMIN_KEY_HEADER, RESTRICTED_TRITON_APIS, TRITON_METRICS_FLAG, ensemble_name
from core.errors import ProjectError
from core.keys import secret_file
from core.processes import ProcessFailed, Supervised, running, wait_for
from core.settings import Environment
from deploy import Endpoint
from model_repository.repository import RepositoryVersion

log = logging.getLogger(__name__)

STATE_FILE = "triton.json"
ADMIN_KEY_FILE = "admin-key"  # mode 0600: the header value Triton's control APIs ask for
LAST_DEPLOYED_FILE = "last_deployed.json"
SHM_FOLDER = Path("/dev/shm")
SHM_REGION_PREFIX = "triton_python_backend_shm_region_"
PYTHON_STUB_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonError(ProjectError, RuntimeError):
    """The local server could not start, or a model could not be loaded."""


@dataclass(frozen=True)
class ServerState:
    pid: int
    repository: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_file: str

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """The header Triton's control APIs ask for, with the key kept beside the server's log.
        Over gRPC Triton reads it as metadata named `triton-grpc-protocol-<header>`."""
        name = ADMIN_KEY_HEADER if protocol == "http" else f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
        return {name: secret_file(Path(self.log_file).parent / ADMIN_KEY_FILE)}


def restricted_api_flags(key: str) -> list[str]:
    """tritonserver's flags that put RESTRICTED_TRITON_APIS behind ADMIN_KEY_HEADER, on both protocols."""
    setting = f"{','.join(RESTRICTED_TRITON_APIS)}:{ADMIN_KEY_HEADER}={key}"
    return [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("nvidia-pytriton is not installed: install the 'serving' extra")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def prepare_backends(target: Path) -> Path:
    """A backend folder whose python backend uses this interpreter's stub version.

    Triton does not choose a stub by itself; links keep the stub's RPATH working.
    """
    root = pytriton_root()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    links = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": root
        / "python_backend_stubs"
        / PYTHON_STUB_VERSION
        / "triton_python_backend_stub",
    }
    for name, source in links.items():
        link = python_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return target


class LocalTriton:
    """Start, inspect, load models into and stop one local tritonserver."""

    def __init__(self, state_dir: Path, *, http_port: int, grpc_port: int, metrics_port: int) -> None:
        self.state_dir = state_dir
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def admin_key(self) -> str:
        """The header value Triton's control APIs ask for: made once, kept in the state folder
        (mode 0600), so only this user (and root) can load a model into the server."""
        return secret_file(self.state_dir / ADMIN_KEY_FILE)

    @property
    def process(self) -> Supervised:
        return Supervised(
            "tritonserver", self.state_dir / "tritonserver.pid", self.state_dir / "tritonserver.log"
        )

    def state(self) -> ServerState | None:
        """The running server's state, or None (a stale file is removed)."""
        if not self.state_file.exists():
            return None
        state = ServerState(**json.loads(self.state_file.read_text()))
        if running(state.pid):
            return state
        self.state_file.unlink()
        return None

    def ensure_running(self, repository: Path, timeout_s: float) -> ServerState:
        """Reuse the server already serving `repository`, else (re)start one."""
        state = self.state()
        # A busy server can miss one 2-second health probe; restarting it would drop
        # the version it serves, so a live server gets the whole timeout to answer
        # (and one that dies meanwhile is restarted at once).
        same_repository = state is not None and Path(state.repository) == repository.resolve()
        if state and same_repository and _ready_while_alive(state, timeout_s):
            return state
        if state:
            log.info("restarting tritonserver (pid %d) on %s", state.pid, repository)
            self.stop()
        return self._start(repository.resolve(), timeout_s)

    def _start(self, repository: Path, timeout_s: float) -> ServerState:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(self.state_dir / "backends")
        _stop_orphaned_stubs(backends)
        command = [
            str(pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            # CPU-only machine: no pinned memory pool, no GPU metrics.
            "--pinned-memory-pool-byte-size=0",
            "--allow-gpu-metrics=false",
            TRITON_METRICS_FLAG,
            *restricted_api_flags(self.admin_key),
        ]
        env = dict(os.environ)
        # The python backend stub takes its packages from the first python3 on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        pid = self.process.start(command, env)  # its own session: it outlives the task that started it
        state = ServerState(
            pid=pid,
            repository=str(repository),
            http_port=self.ports["http"],
            grpc_port=self.ports["grpc"],
            metrics_port=self.ports["metrics"],
            log_file=str(self.process.log_file),
        )
        try:
            self.process.wait_until_ready(lambda: _ready(state.http_url), timeout_s, TritonError)
        except TritonError:
            self.process.stop(grace_s=30, group=False)
            raise
        self.state_file.write_text(json.dumps(asdict(state), indent=2))
        log.info("tritonserver pid %d ready on http://%s", pid, state.http_url)
        return state

    def load(self, state: ServerState, model_name: str, timeout_s: float) -> int:
        """(Re)load `model_name` from the repository; returns the version now ready.

        Triton keeps the old version serving until the new one has loaded.
        """
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(state.http_url, network_timeout=timeout_s)
        try:
            client.load_model(model_name, headers=state.admin_headers())
        except InferenceServerException as exc:
            raise TritonError(f"loading {model_name} failed: {exc.message()}") from exc
        finally:
            client.close()
        version = self.served_models(state).get(model_name)
        if version is None:
            raise TritonError(f"{model_name} has no READY version after loading:\n" + self.process.tail())
        return version

    def served_models(self, state: ServerState) -> dict[str, int]:
        """Each READY model with the newest version it serves, from the repository index."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(state.http_url, network_timeout=30)
        try:
            index = client.get_model_repository_index(headers=state.admin_headers())
        except InferenceServerException as exc:
            raise TritonError(f"reading the repository index failed: {exc.message()}") from exc
        finally:
            client.close()
        served: dict[str, int] = {}
        for entry in index:
            if entry.get("state") == "READY" and entry.get("version"):
                served[entry["name"]] = max(served.get(entry["name"], 0), int(entry["version"]))
        return served

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM to the server alone (Triton stops its stubs and cleans its shared memory),
        SIGKILL as a last resort, which leaves the stubs running: those are ended too."""
        state = self.state()
        if state is None:
            return False
        self.process.stop(timeout_s, group=False)
        _stop_orphaned_stubs(self.state_dir / "backends")
        self.state_file.unlink(missing_ok=True)
        log.info("stopped tritonserver pid %d", state.pid)
        return True


def _stop_orphaned_stubs(backends: Path) -> None:
    """A tritonserver killed with SIGKILL leaves its python-backend stubs running (each
    holds a model in memory) and their shared-memory regions in /dev/shm; end and remove
    those of this state folder before starting anew."""
    import psutil

    stub = str(backends / "python" / "triton_python_backend_stub")
    for process in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = process.info["cmdline"] or []
        if not cmdline or cmdline[0] != stub:
            continue
        try:
            parent = psutil.Process(process.info["ppid"]).name()
        except psutil.Error:
            parent = ""
        if parent != "tritonserver":
            log.warning("stopping python-backend stub %d left by a killed tritonserver", process.pid)
            with contextlib.suppress(psutil.Error):
                process.kill()
            # The stub's second argument names its region (triton_python_backend_shm_region_<uuid>).
            if len(cmdline) > 2 and cmdline[2].startswith(SHM_REGION_PREFIX):
                (SHM_FOLDER / cmdline[2]).unlink(missing_ok=True)


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _ready_while_alive(state: ServerState, timeout_s: float) -> bool:
    """Whether the server answers ready within `timeout_s`; False as soon as its process
    is gone (a SIGKILLed server's pid outlives the signal for a moment)."""

    def gone() -> str | None:
        return None if running(state.pid) else f"tritonserver pid {state.pid} exited"

    try:
        wait_for(f"tritonserver on {state.http_url}", lambda: _ready(state.http_url), timeout_s, failed=gone)
    except ProcessFailed:
        return False
    return True


def server_from_environment(environment: Environment) -> LocalTriton:
    return LocalTriton(
        environment.state_dir,
        http_port=environment.triton_http_port,
        grpc_port=environment.triton_grpc_port,
        metrics_port=environment.triton_metrics_port,
    )


def deploy_version(version: RepositoryVersion, environment: Environment) -> Endpoint:
    """Serve `version` from the local tritonserver, starting it when needed."""
    server = server_from_environment(environment)
    repository = _local_repository(version.repository_uri, environment.state_dir)
    state = server.ensure_running(repository, environment.triton_ready_timeout_s)
    loaded = _load_with_ensemble(server, state, version.model_name, environment)
    if loaded != version.version:
        raise TritonError(
            f"Triton serves version {loaded} of {version.model_name}, expected {version.version}"
        )
    (environment.state_dir / LAST_DEPLOYED_FILE).write_text(json.dumps(asdict(version), indent=2))
    return _endpoint(state, version.model_name, loaded)


def serve(environment: Environment, repository_uri: str = "") -> dict[str, int]:
    """Serve `repository_uri` (default: the one last deployed), loading the newest version of
    each model in it; returns what is served. What `python -m deploy serve` runs after a reboot."""
    if not repository_uri:
        last = environment.state_dir / LAST_DEPLOYED_FILE
        if not last.exists():
            raise TritonError(f"nothing was deployed from {environment.state_dir} yet: give a repository")
        repository_uri = json.loads(last.read_text())["repository_uri"]
    server = server_from_environment(environment)
    repository = _local_repository(repository_uri, environment.state_dir)
    state = server.ensure_running(repository, environment.triton_ready_timeout_s)
    # A classifier is a model with a JPEG ensemble beside it; the ensemble brings its preprocessing.
    classifiers = sorted(
        folder.name for folder in repository.iterdir() if (repository / ensemble_name(folder.name)).is_dir()
    )
    if not classifiers:
        raise TritonError(f"{repository_uri} holds no model packaged by this project")
    for model_name in classifiers:
        _load_with_ensemble(server, state, model_name, environment)
    return server.served_models(state)


def served_endpoint(environment: Environment, model_name: str) -> Endpoint:
    """Where the local server answers for `model_name` now, and which version it serves."""
    server = server_from_environment(environment)
    state = server.state()
    if state is None:
        raise TritonError(
            "no local tritonserver is running: run the dogs_cats DAG or `python -m deploy serve`"
        )
    version = server.served_models(state).get(model_name)
    if version is None:
        raise TritonError(f"the local tritonserver does not serve {model_name}")
    return _endpoint(state, model_name, version)


def _load_with_ensemble(
    server: LocalTriton, state: ServerState, model_name: str, environment: Environment
) -> int:
    loaded = server.load(state, model_name, environment.triton_ready_timeout_s)
    # The JPEG ensemble follows the classifier's latest version; loading it also
    # (re)loads its preprocessing model.
    server.load(state, ensemble_name(model_name), environment.triton_ready_timeout_s)
    return loaded


def _endpoint(state: ServerState, model_name: str, version: int) -> Endpoint:
    return Endpoint(
        url=state.http_url, model_name=model_name, version=version, grpc_url=f"127.0.0.1:{state.grpc_port}"
    )


def _local_repository(repository_uri: str, state_dir: Path) -> Path:
    """Triton reads a local folder: a gs:// repository is mirrored into the state folder."""
    if not storage.is_remote(repository_uri):
        if not Path(repository_uri).is_dir():
            raise TritonError(f"no model repository at {repository_uri}")
        return Path(repository_uri)
    return storage.download_tree(repository_uri, state_dir / "model_repository")
