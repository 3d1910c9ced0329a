from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from core.constants import INPUT_NAME, MODEL_NAME
from core.settings import Environment
from deploy.local_triton import (
    ADMIN_KEY_FILE,
    LocalTriton,
    TritonError,
    deploy_version,
    prepare_backends,
    server_from_environment,
)
from harness.data import REPO_ROOT
from model_repository.repository import ONNX_FILES, package_model


def test_backend_folder_links_this_pythons_stub(tmp_path: Path) -> None:
    backends = prepare_backends(tmp_path / "backends")
    stub = backends / "python" / "triton_python_backend_stub"
    assert stub.is_symlink()
    assert stub.resolve().parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (backends / "python" / "libtriton_python.so").resolve().is_file()
    prepare_backends(tmp_path / "backends")  # idempotent: relinks in place


def _record_server(server: LocalTriton, pid: int, repository: Path) -> None:
    """Write the state file a started server leaves behind."""
    server.state_dir.mkdir(parents=True, exist_ok=True)
    state = {"pid": pid, "repository": str(repository), "log_file": "/l"}
    state |= {f"{kind}_port": port for kind, port in server.ports.items()}
    server.state_file.write_text(json.dumps(state))


def test_state_of_a_dead_server_is_cleared(tmp_path: Path) -> None:
    server = LocalTriton(tmp_path, http_port=1, grpc_port=2, metrics_port=3)
    dead = subprocess.Popen(["true"])
    dead.wait()
    _record_server(server, dead.pid, Path("/r"))
    assert server.state() is None
    assert not server.state_file.exists()
    assert server.stop() is False


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_server_that_dies_while_probed_is_restarted_at_once(
    tmp_path: Path, server_ports: dict[str, int]
) -> None:
    """A SIGKILLed server's pid outlives the signal for a moment: ensure_running must not
    spend its whole ready timeout (600 s here) probing a process that is gone."""
    repository = tmp_path / "repo"
    repository.mkdir()
    server = LocalTriton(tmp_path / "state", **server_ports)
    dying = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])  # never answers
    _record_server(server, dying.pid, repository)
    try:
        state = server.ensure_running(repository, timeout_s=600)
        assert state.pid != dying.pid
        assert httpclient.InferenceServerClient(state.http_url).is_server_ready()
    finally:
        server.stop()


@pytest.fixture
def environment(tmp_path: Path, server_ports: dict[str, int]) -> Environment:
    """Deployment settings with a private state folder and free ports."""
    return Environment(
        state_dir=tmp_path / "state",
        triton_http_port=server_ports["http_port"],
        triton_grpc_port=server_ports["grpc_port"],
        triton_metrics_port=server_ports["metrics_port"],
    )


class Traffic:
    """Requests sent back to back from a thread, recording who answered or why not."""

    def __init__(self, url: str, images: np.ndarray) -> None:
        self.url, self.images = url, images
        self.versions: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=30)
        model_input = httpclient.InferInput(INPUT_NAME, list(self.images.shape), "UINT8")
        model_input.set_data_from_numpy(self.images, binary_data=True)
        while not self._stop.is_set():
            try:
                result = client.infer("dogs_cats", inputs=[model_input])
                self.versions.append(result.get_response()["model_version"])
            except Exception as exc:
                self.failures.append(str(exc))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.versions) + len(self.failures) < count and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.mark.faults
@pytest.mark.integration
def test_new_versions_swap_in_without_a_failed_request(
    tmp_path: Path, trained_model: str, environment: Environment, server_ports: dict[str, int]
) -> None:
    repository = str(tmp_path / "repo")
    server = server_from_environment(environment)
    try:
        first = package_model(
            trained_model, repository, flavour="python", model_name="dogs_cats", max_batch_size=4
        )
        endpoint = deploy_version(first, environment)
        assert endpoint.version == 1
        assert endpoint.url == f"127.0.0.1:{server_ports['http_port']}"
        pid = server.state().pid  # type: ignore[union-attr]
        images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)

        retrained = shutil.copytree(trained_model, tmp_path / "retrained")  # another run's model folder
        second = package_model(
            str(retrained), repository, flavour="python", model_name="dogs_cats", max_batch_size=4
        )
        with Traffic(endpoint.url, images) as traffic:
            traffic.wait_for(20)
            assert deploy_version(second, environment).version == 2
            seen_at_swap = len(traffic.versions)
            traffic.wait_for(seen_at_swap + 20)
        assert traffic.failures == [], "no request fails while the new version loads"
        assert traffic.versions[0] == "1"
        assert traffic.versions[-1] == "2"
        switched = traffic.versions.index("2")
        assert set(traffic.versions[switched:]) == {"2"}, "once version 2 answers, version 1 is gone"
        assert server.state().pid == pid, "a new version loads into the running server"  # type: ignore[union-attr]

        # A broken version 3: the task fails with Triton's reason, version 2 keeps serving.
        broken_model = shutil.copytree(trained_model, tmp_path / "broken")
        for onnx_file in ONNX_FILES.values():  # whichever precision the INT8 verdict serves
            (broken_model / onnx_file).write_bytes(b"this is not onnx")
        third = package_model(
            str(broken_model), repository, flavour="python", model_name="dogs_cats", max_batch_size=4
        )
        with Traffic(endpoint.url, images) as traffic:
            traffic.wait_for(10)
            with pytest.raises(TritonError, match=r"loading dogs_cats failed.*(onnx|ONNX|protobuf)"):
                deploy_version(third, environment)
            traffic.wait_for(len(traffic.versions) + 10)
        assert traffic.failures == []
        assert set(traffic.versions) == {"2"}

        # `python -m deploy status` (what `make stop` uses) finds the server by its state file.
        env = {**os.environ, "DOGS_CATS_STATE_DIR": str(environment.state_dir)}
        status = subprocess.run(
            [sys.executable, "-m", "deploy", "status"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert status.returncode == 0
        assert json.loads(status.stdout)["pid"] == pid
        stop = subprocess.run(
            [sys.executable, "-m", "deploy", "stop"], cwd=REPO_ROOT, env=env, capture_output=True
        )
        assert stop.returncode == 0
        assert server.state() is None
    finally:
        server.stop()


@pytest.mark.faults
@pytest.mark.integration
def test_a_model_that_fails_to_load_names_triton_s_error(
    tmp_path: Path, trained_model: str, server_ports: dict[str, int]
) -> None:
    repository = tmp_path / "repo"
    package_model(trained_model, str(repository), flavour="python", model_name="dogs_cats", max_batch_size=4)
    (repository / "dogs_cats" / "1" / "model.onnx").write_bytes(b"this is not onnx")
    server = LocalTriton(tmp_path / "state", **server_ports)
    try:
        state = server.ensure_running(repository, timeout_s=60)
        with pytest.raises(TritonError, match="loading dogs_cats failed"):
            server.load(state, "dogs_cats", timeout_s=120)
    finally:
        server.stop()


@pytest.mark.integration
def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path, server_ports: dict[str, int]) -> None:
    server = LocalTriton(tmp_path / "state", **server_ports)
    with pytest.raises(TritonError, match="tritonserver exited"):
        server.ensure_running(tmp_path / "no-such-repository", timeout_s=30)
    assert server.state() is None


@pytest.mark.integration
def test_a_repository_on_gcs_is_mirrored_and_served(trained_model: str, environment: Environment) -> None:
    from harness.gcs import emulated_gcs
    from harness.serving import free_port

    with emulated_gcs("repo-test", free_port()) as bucket:
        version = package_model(
            trained_model,
            f"{bucket}/model_repository/local",
            flavour="python",
            model_name="dogs_cats",
            max_batch_size=4,
        )
        try:
            assert deploy_version(version, environment).version == 1
            mirrored = environment.state_dir / "model_repository" / "dogs_cats"
            assert (mirrored / "1" / "model.onnx").is_file()
            assert (mirrored / "config.pbtxt").is_file()
        finally:
            server_from_environment(environment).stop()


EVIL_MODEL = b"""
import pathlib
class TritonPythonModel:
    def initialize(self, args):
        pathlib.Path(%r).write_text("code ran in the server")
"""


@pytest.mark.integration
@pytest.mark.security
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_s_control_apis_need_the_admin_key(served_model: dict, tmp_path: Path, protocol: str) -> None:
    """Loading a model runs its code as the server's user: only the key's holder may; anyone
    on loopback still infers, checks health and reads metadata and config."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server: LocalTriton = served_model["server"]
    state = server.state()
    assert state is not None
    assert stat.S_IMODE((server.state_dir / ADMIN_KEY_FILE).stat().st_mode) == 0o600
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(
        state.http_url if protocol == "http" else f"127.0.0.1:{state.grpc_port}"
    )
    marker = tmp_path / "marker"
    evil = {"backend": "python", "max_batch_size": 0, "input": [], "output": []}
    try:
        refusals = {
            "a model with its code": lambda headers: client.load_model(
                "evil",
                config=json.dumps(evil),
                files={"file:1/model.py": EVIL_MODEL % str(marker)},
                headers=headers,
            ),
            "the repository index": lambda headers: client.get_model_repository_index(headers=headers),
            "the log file": lambda headers: client.update_log_settings(
                {"log_file": str(marker)}, headers=headers
            ),
        }
        for what, call in refusals.items():
            guessed = {name: "a guess" for name in state.admin_headers(protocol)}
            for headers in (None, guessed):
                with pytest.raises(InferenceServerException, match="restricted"):
                    call(headers)
            assert not marker.exists(), what
        client.load_model(MODEL_NAME, headers=state.admin_headers(protocol))  # the key's holder may
        assert client.is_server_ready()
        assert client.get_model_metadata(MODEL_NAME)
        assert client.get_model_config(MODEL_NAME)
        image = module.InferInput(INPUT_NAME, [1, 32, 32, 3], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8))
        answer = client.infer(MODEL_NAME, [image])
        assert answer.as_numpy("probabilities").shape == (1, 2)
    finally:
        client.close()
