"""The Kubernetes deploy task's logic end to end: the fake Deployment controller,
with the real local tritonserver standing in for the Service it smoke-tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.images import ImageDecodeError
from core.settings import Environment
from deploy import Endpoint
from deploy.rollout import (
    DeploymentFailed,
    RolloutFailed,
    finish_serving,
    smoke_test,
    start_serving,
    wait_for_rollout,
)
from harness.fake_cluster import FakeCluster
from model_repository.repository import RepositoryVersion

pytestmark = pytest.mark.integration


def _images(session_images: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(session_images.rglob("*.jpg"))[:3]]


def test_smoke_test_passes_on_the_served_version(served_model: dict, session_images: Path) -> None:
    smoke_test(served_model["url"], "dogs_cats", served_model["version"].version, _images(session_images))


@pytest.fixture
def short_routing_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version that never answers waits out the routing delay first: a short one here."""
    monkeypatch.setattr("deploy.rollout.ROUTED_TIMEOUT_S", 2.0)


@pytest.mark.usefixtures("short_routing_wait")
def test_smoke_test_fails_when_another_version_answers(served_model: dict, session_images: Path) -> None:
    with pytest.raises(RolloutFailed, match=r"serves dogs_cats versions \['1'\], not 7"):
        smoke_test(served_model["url"], "dogs_cats", 7, _images(session_images))


def test_smoke_test_fails_on_an_image_the_server_cannot_decode(served_model: dict) -> None:
    with pytest.raises(ImageDecodeError, match="not an image Pillow can read"):
        smoke_test(served_model["url"], "dogs_cats", 1, [b"not an image"])


def _deploy(
    cluster: FakeCluster,
    version: RepositoryVersion,
    image: str,
    smoke_images_uri: str,
    environment: Environment,
) -> Endpoint:
    """The deploy task without deferring (RolloutOperator(deferrable=False)): apply, wait here,
    then the real smoke test against the local tritonserver standing in for the Service."""
    spec = start_serving(cluster, version, image, smoke_images_uri, environment)

    def rolled_out() -> str:
        return wait_for_rollout(cluster, spec.namespace, spec.name, timeout_s=environment.rollout_timeout_s)

    return finish_serving(cluster, spec, smoke_images_uri, environment, rolled_out)


def _version(served_model: dict, number: int) -> RepositoryVersion:
    packaged: RepositoryVersion = served_model["version"]
    return RepositoryVersion(packaged.repository_uri, "dogs_cats", number, "onnxruntime", 8)


def test_deploy_task_rolls_out_and_returns_the_service_endpoint(
    served_model: dict, session_images: Path
) -> None:
    environment = Environment(platform="kubernetes", serving_url=served_model["url"])
    cluster = FakeCluster()
    cats = str(session_images / "cat")
    endpoint = _deploy(cluster, _version(served_model, 1), "r/i:v1-abc", cats, environment)
    assert endpoint.url == served_model["url"]
    assert endpoint.version == 1
    assert cluster.deployment is not None


@pytest.mark.usefixtures("short_routing_wait")
def test_deploy_task_rolls_back_when_the_new_pods_serve_the_wrong_model(
    served_model: dict, session_images: Path
) -> None:
    environment = Environment(platform="kubernetes", serving_url=served_model["url"])
    cluster = FakeCluster()
    cats = str(session_images / "cat")
    _deploy(cluster, _version(served_model, 1), "r/i:v1", cats, environment)
    with pytest.raises(DeploymentFailed, match=r"not 2.*rolled back to revision 1"):
        _deploy(cluster, _version(served_model, 2), "r/i:v2", cats, environment)
    assert cluster.deployment is not None
    assert cluster.deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "r/i:v1"


def test_deploy_task_without_smoke_images_applies_nothing(tmp_path: Path) -> None:
    cluster = FakeCluster()
    version = RepositoryVersion("r", "dogs_cats", 1, "onnxruntime", 8)
    with pytest.raises(DeploymentFailed, match="no images under"):
        _deploy(cluster, version, "r/i:v1", str(tmp_path), Environment())
    assert cluster.applied == []
