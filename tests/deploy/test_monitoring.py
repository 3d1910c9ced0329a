"""Prometheus reading the real local tritonserver: the served model's counters after a smoke
test, the recording rules evaluated by a real Prometheus, and nothing listening beyond loopback."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest

from core.processes import wait_for
from core.settings import Environment
from deploy.canary import measure
from deploy.kubernetes import ServingSpec, deployment, scaled_object
from deploy.monitoring import (
    QUEUE_PER_COMPUTE_SERIES,
    RULES,
    SCRAPE_JOB,
    LocalPrometheus,
    PrometheusApi,
    kubernetes_scrape,
    local_scrape,
    prometheus_manifests,
    serving_figures,
)
from deploy.rollout import smoke_test
from harness.serving import free_port
from harness.sockets import listening_addresses

SUCCESS = "nv_inference_request_success"


@pytest.fixture
def prometheus(served_model: dict, tmp_path: Path) -> Iterator[tuple[LocalPrometheus, PrometheusApi]]:
    state = served_model["server"].state()
    local = LocalPrometheus(tmp_path / "prometheus", Environment().prometheus_binary, free_port())
    api = local.start(local_scrape(f"127.0.0.1:{state.metrics_port}"))
    try:
        yield local, api
    finally:
        local.stop()


def _triton_counter(served_model: dict, model: str) -> float:
    """The counter as Triton itself exports it now."""
    state = served_model["server"].state()
    with urllib.request.urlopen(f"http://127.0.0.1:{state.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = rf'^{SUCCESS}{{[^}}]*model="{model}"[^}}]*}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, flags=re.MULTILINE))


@pytest.mark.integration
def test_prometheus_answers_for_the_served_model_after_the_smoke_test(
    served_model: dict, session_images: Path, prometheus: tuple[LocalPrometheus, PrometheusApi]
) -> None:
    local, api = prometheus
    images = [path.read_bytes() for path in sorted(session_images.rglob("*.jpg"))[:3]]
    smoke_test(served_model["url"], "dogs_cats", served_model["version"].version, images)
    served = _triton_counter(served_model, "dogs_cats")
    assert served >= 1  # a request may carry several images

    def scraped() -> list[dict]:
        samples = api.query(f'sum by (model, version, track) ({SUCCESS}{{model="dogs_cats"}})')
        return [s for s in samples if float(s["value"][1]) >= served]

    [sample] = wait_for("Prometheus to scrape the smoke test's requests", scraped, timeout_s=60)
    assert sample["metric"] == {"model": "dogs_cats", "version": "1", "track": "stable"}
    pid = local.process().pid()
    assert pid is not None
    assert listening_addresses({pid}) == {"127.0.0.1"}


@pytest.mark.integration
def test_every_recording_rule_evaluates_on_triton_s_metrics(
    served_model: dict, session_images: Path, prometheus: tuple[LocalPrometheus, PrometheusApi]
) -> None:
    """Each recorded series appears for the served model, labelled with its version and track:
    the rules name metrics this tritonserver exports, with the flags it runs with."""
    _, api = prometheus
    images = [path.read_bytes() for path in sorted(session_images.rglob("*.jpg"))[:3]]
    version = served_model["version"].version
    recorded = [rule["record"] for rule in RULES]

    def all_recorded() -> bool:
        smoke_test(served_model["url"], "dogs_cats", version, images)  # keeps every rate above zero
        found = {
            name: api.query(f'{name}{{model="dogs_cats", version="{version}", track="stable"}}')
            for name in recorded
        }
        return all(found.values())

    wait_for("every recording rule to produce a series", all_recorded, timeout_s=90, interval_s=3)
    # What the batch stage's report carries: this window's requests, failures and quantiles.
    figures = serving_figures(api, "dogs_cats", window_s=300)["by_version_and_track"]
    served = figures[f"{version}/stable"]
    assert served["requests"] >= 1
    assert served["failures"] == 0
    assert 0 < served["p50_us"] <= served["p99_us"]
    # The canary analysis' queries: this server is the stable track, and no canary has served.
    canary = measure(api, "dogs_cats", version, window_s=300)
    assert (canary.requests, canary.failures, canary.p99_ms) == (0, 0, None)
    assert canary.stable_p99_ms is not None
    assert canary.stable_p99_ms > 0


@pytest.mark.integration
def test_the_autoscaler_reads_zero_once_no_triton_is_scraped_though_the_rate_remembers_its_load(
    served_model: dict, session_images: Path, tmp_path: Path
) -> None:
    """The ScaledObject's query on a Prometheus that finds Triton as the cluster's does: by
    discovery, labelled with a namespace and a track. When discovery loses the target (the
    last pod has gone), the query reads 0 within 30 s, while the 1-minute ratio still holds the
    load it saw: a model at zero wakes for a hold, never for the load of the pods it had."""
    environment = Environment(platform="kubernetes", namespace="ml", prometheus_url="http://unused")
    spec = ServingSpec.from_environment(environment, image="unused", model_name="dogs_cats", model_version=1)
    (trigger,) = scaled_object(spec)["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    remembered = f'max({QUEUE_PER_COMPUTE_SERIES}{{namespace="ml", model="dogs_cats"}} >= 0)'
    targets = tmp_path / "targets.json"

    def discover(found: list[dict]) -> None:  # whole files only: Prometheus may read it any time
        written = tmp_path / "targets.json.new"
        written.write_text(json.dumps(found))
        written.replace(targets)

    metrics = f"127.0.0.1:{served_model['server'].state().metrics_port}"
    discover([{"targets": [metrics], "labels": {"namespace": "ml", "track": "stable"}}])
    discovery = {"files": [str(targets)], "refresh_interval": "5s"}
    scrape = [{"job_name": SCRAPE_JOB, "file_sd_configs": [discovery]}]
    local = LocalPrometheus(tmp_path / "prometheus", environment.prometheus_binary, free_port())
    api = local.start(scrape)
    try:
        images = [path.read_bytes() for path in sorted(session_images.rglob("*.jpg"))[:3]]
        version = served_model["version"].version

        def value(promql: str) -> float:
            return max((float(sample["value"][1]) for sample in api.query(promql)), default=0.0)

        def queued() -> bool:
            smoke_test(served_model["url"], "dogs_cats", version, images)
            return value(query) > 0

        wait_for("the autoscaler's query to see requests queue", queued, timeout_s=90, interval_s=3)
        discover([])
        wait_for("the autoscaler's query to read 0", lambda: value(query) == 0, timeout_s=30, interval_s=1)
        assert value(remembered) > 0, "the ratio still holds the load: what read 0 is the gate"
    finally:
        local.stop()


def test_the_cluster_s_prometheus_is_valid_and_may_only_read_pods() -> None:
    manifests = prometheus_manifests("monitoring", "10.88.0.1:5000/prometheus:v0.316.0")
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.33", strict=True)
    [role] = [m for m in manifests if m["kind"] == "ClusterRole"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    [deployment] = [m for m in manifests if m["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    [service] = [m for m in manifests if m["kind"] == "Service"]
    assert service["spec"]["type"] == "ClusterIP"


def test_the_cluster_scrape_keeps_the_triton_pods_and_labels_their_track() -> None:
    """The relabelling names the labels the Triton Deployment's pods carry (deploy/kubernetes.py)."""
    spec = ServingSpec.from_environment(
        Environment(platform="kubernetes", gpus=0), image="i", model_name="dogs_cats", model_version=3
    )
    pod_labels = deployment(spec)["spec"]["template"]["metadata"]["labels"]
    [job] = kubernetes_scrape()
    meta = {
        "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9]", "_", k): v for k, v in pod_labels.items()
    }
    keep = job["relabel_configs"][0]
    assert ";".join(meta[label] for label in keep["source_labels"]) == keep["regex"]
    track = next(rule for rule in job["relabel_configs"] if rule.get("target_label") == "track")
    assert meta[track["source_labels"][0]] == "stable"
