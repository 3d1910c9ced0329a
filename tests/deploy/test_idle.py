"""A model idling at zero: the wake holds, what they send, and the deploy that holds one for
its smoke test. KEDA acting on them (from zero and back) is the cluster tests' part."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.constants import MIN_SERVING_IDLE_S
from core.settings import CanaryParams, Environment
from deploy import Endpoint
from deploy.canary import roll_out, start_canary
from deploy.idle import NothingToWake, WakeHold, held_awake, hold_awake, release_hold, serving_now
from deploy.kubernetes import FORCE_ACTIVATION, WAKE_HOLD_PREFIX, ServingSpec, serving_manifests
from deploy.rollout import FIELD_MANAGER, start_serving
from harness.data import write_images
from harness.fake_cluster import FakeCluster
from model_repository.repository import RepositoryVersion

IDLE = {"serving_replicas": 0, "serving_max_replicas": 2, "serving_idle_s": 120}
HOLD = WakeHold.for_run("dogs_cats_batch", "manual__2026-12-06T05:00:00+00:00", "batch")
# An annotation's name: 63 characters at most, alphanumerics at both ends.
ANNOTATION_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def _environment(**overrides: int) -> Environment:
    settings = {**IDLE, **overrides}
    return Environment(platform="kubernetes", prometheus_url="http://prometheus:9090", **settings)  # type: ignore[arg-type]


def _version(version: int) -> RepositoryVersion:
    return RepositoryVersion("r", "m", version, "onnxruntime", 8)


@pytest.fixture
def smoke_images(tmp_path: Path) -> Path:
    return write_images(tmp_path / "smoke", per_class=1, size=16)


@pytest.fixture
def deployed(smoke_images: Path) -> FakeCluster:
    """An idle-at-zero model deployed: its ScaledObject is there to hold."""
    cluster = FakeCluster()
    start_serving(cluster, _version(1), "r/dogs-cats-triton:v1", str(smoke_images), _environment())
    return cluster


def test_an_idle_model_scales_from_zero_and_waits_its_idle_time_before_going_back() -> None:
    environment = _environment()
    spec = ServingSpec.from_environment(environment, image="r/i:v1", model_name="m", model_version=1)
    scaled = next(m for m in serving_manifests(spec) if m["kind"] == "ScaledObject")
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 2)
    assert scaled["spec"]["cooldownPeriod"] == 120
    awake = ServingSpec.from_environment(
        _environment(serving_replicas=1), image="r/i:v1", model_name="m", model_version=1
    )
    assert (
        "cooldownPeriod"
        not in next(m for m in serving_manifests(awake) if m["kind"] == "ScaledObject")["spec"]
    )


def test_idling_at_zero_needs_keda_to_wake_it() -> None:
    with pytest.raises(ValidationError, match="KEDA is what wakes it"):
        Environment(platform="kubernetes", serving_replicas=0, prometheus_url="http://p:9090")
    Environment(platform="local", serving_replicas=0)  # one local tritonserver: nothing idles


def test_an_idle_time_shorter_than_the_load_takes_to_reach_keda_is_refused() -> None:
    """KEDA counts the idle time from its last poll under a hold: a shorter one could take the
    last pod away before that pod's last requests show, and then wake it on them."""
    with pytest.raises(ValidationError, match="serving_idle_s"):
        _environment(serving_idle_s=MIN_SERVING_IDLE_S - 1)
    assert _environment(serving_idle_s=MIN_SERVING_IDLE_S).serving_idle_s == MIN_SERVING_IDLE_S


def test_a_hold_is_the_force_activation_applied_as_the_holder_s_own_field_manager(
    deployed: FakeCluster,
) -> None:
    assert hold_awake(deployed, _environment(), HOLD) is True
    ((manager, manifest),) = deployed.applied_by_others
    assert manager == f"{FIELD_MANAGER}-wake-{HOLD.holder}" != FIELD_MANAGER
    assert manifest == {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {
            "name": "dogs-cats-triton",
            "namespace": "dogs-cats",
            "annotations": {
                FORCE_ACTIVATION: "true",
                f"{WAKE_HOLD_PREFIX}{HOLD.holder}": (
                    "batch of dogs_cats_batch run manual__2026-12-06T05:00:00+00:00"
                ),
            },
        },
    }


def test_a_release_is_the_holder_s_empty_apply(deployed: FakeCluster) -> None:
    release_hold(deployed, _environment(), HOLD)
    ((manager, manifest),) = deployed.applied_by_others
    assert manager == HOLD.field_manager
    assert manifest == {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "dogs-cats-triton", "namespace": "dogs-cats"},
    }, "it gives up every field it held, and nothing else"


def test_each_run_holds_apart_and_a_retry_takes_the_same_hold() -> None:
    again = WakeHold.for_run("dogs_cats_batch", "manual__2026-12-06T05:00:00+00:00", "batch")
    other = WakeHold.for_run("dogs_cats_batch", "manual__2026-12-06T06:00:00+00:00", "batch")
    assert again == HOLD
    assert other.holder != HOLD.holder
    assert WakeHold.for_run("dogs_cats_batch", again.why, "deploy").holder != HOLD.holder
    for hold in (HOLD, other):
        assert ANNOTATION_NAME.fullmatch(hold.holder), hold.holder


def test_a_model_that_never_idles_is_neither_held_nor_released(deployed: FakeCluster) -> None:
    awake = _environment(serving_replicas=1)
    assert hold_awake(deployed, awake, HOLD) is False
    release_hold(deployed, awake, HOLD)
    assert deployed.applied_by_others == []


def test_nothing_deployed_is_nothing_to_wake_and_says_what_to_do() -> None:
    with pytest.raises(NothingToWake, match="deploy a model with these settings first"):
        hold_awake(FakeCluster(), _environment(), HOLD)


def test_a_held_block_lets_go_when_it_fails(deployed: FakeCluster) -> None:
    def batch() -> None:
        with held_awake(deployed, _environment(), HOLD) as held:
            assert held
            raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError, match="the batch failed"):
        batch()
    assert [manifest["metadata"].get("annotations") for _, manifest in deployed.applied_by_others] == [
        {FORCE_ACTIVATION: "true", f"{WAKE_HOLD_PREFIX}{HOLD.holder}": HOLD.why},
        None,
    ]


def test_a_deploy_to_an_idle_model_holds_it_awake_for_its_smoke_test_and_lets_go(
    deployed: FakeCluster, smoke_images: Path
) -> None:
    """No canary (no live traffic to judge one on): the new version rolls out directly, with a
    pod woken for the smoke test, and the hold goes after it."""
    environment, deploy_hold = _environment(), WakeHold.for_run("dogs_cats", "run", "deploy")
    deployed.read_deployment("", "")  # version 1 rolled out
    deployed.deployment["spec"]["replicas"] = 0  # type: ignore[index]  # KEDA scaled it to zero
    assert (
        start_canary(deployed, _version(2), "r/i:v2", str(smoke_images), environment, CanaryParams()) is None
    )
    smoked: list[tuple[int, int, int]] = []

    def smoke(url: str, model: str, version: int, images: list[bytes]) -> None:
        available = deployed.deployment["status"].get("availableReplicas", 0)  # type: ignore[index]
        smoked.append((version, len(deployed.applied_by_others), available))

    endpoint, verdict = roll_out(
        deployed,
        _version(2),
        "r/i:v2",
        str(smoke_images),
        environment,
        CanaryParams(),
        hold=deploy_hold,
        smoke=smoke,
        sleep=lambda _: None,
        poll_s=0,
    )
    assert (endpoint.version, verdict) == (2, None)
    assert smoked == [(2, 1, 1)], "smoke-tested while held, once a pod was woken"
    assert [manager for manager, _ in deployed.applied_by_others] == [deploy_hold.field_manager] * 2
    assert deployed.applied_by_others[-1][1]["metadata"].get("annotations") is None, "released"


def test_the_champion_is_held_awake_while_it_is_scored_and_let_go_after(
    deployed: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    answering: list[str] = []
    monkeypatch.setattr("deploy.idle.wait_until_answering", lambda url, what, **kw: answering.append(url))
    monkeypatch.setattr(
        "deploy.idle.served_endpoint", lambda api, environment, model: Endpoint("127.0.0.1:8000", model, 1)
    )
    hold = WakeHold.for_run("dogs_cats", "manual__2026-12-06T09:00:00+00:00", "champion")
    with serving_now(deployed, _environment(), "dogs_cats", hold) as endpoint:
        assert endpoint == Endpoint("127.0.0.1:8000", "dogs_cats", 1)
        assert answering, "it waited for the Service to answer first"
        ((manager, held),) = deployed.applied_by_others
        assert manager == hold.field_manager
        assert held["metadata"]["annotations"][FORCE_ACTIVATION] == "true"
    (_, released) = deployed.applied_by_others[-1]
    assert "annotations" not in released["metadata"], "the hold went with the block"


def test_before_the_first_deployment_there_is_no_champion_and_nothing_is_held() -> None:
    cluster = FakeCluster()
    hold = WakeHold.for_run("dogs_cats", "manual__2026-12-06T09:00:00+00:00", "champion")
    with serving_now(cluster, _environment(), "dogs_cats", hold) as endpoint:
        assert endpoint is None
    assert cluster.applied_by_others == []
