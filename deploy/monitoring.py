"""Prometheus reading Triton's metrics: the recording rules the serving decisions use, the
scrape configuration of each platform, the local server, and the query API.

Triton exports per model and version (port 8002): request success and failure counters, the
cumulative time requests spent queued and computing, and, with `summary_latencies`, a
latency summary with quantiles. The rules below turn them into what the autoscaler, the
canary analysis and the run's report read, one series per model, version and track
(`stable`, or `canary` for a canary's pods).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.constants import SCRAPE_INTERVAL_S
from core.errors import ProjectError
from core.processes import ProcessFailed, Supervised, wait_for
from core.settings import Environment

log = logging.getLogger(__name__)

# The labels every recorded series keeps: Triton's own (model, version), the pod's track and,
# on a cluster, its namespace.
BY = "namespace, model, version, track"
WINDOW = "1m"  # four scrapes at least: a rate over fewer is noise
SCRAPE_INTERVAL = f"{SCRAPE_INTERVAL_S}s"
SUCCESS_RATE_SERIES = "model_version_track:nv_inference_request_success:rate1m"
P99_SERIES = "model_version_track:nv_inference_request_summary_us:p99"
P50_SERIES = "model_version_track:nv_inference_request_summary_us:p50"
QUEUE_PER_COMPUTE_SERIES = "model_version_track:nv_inference_queue_per_compute:ratio_rate1m"
RULES: list[dict[str, str]] = [
    {
        "record": SUCCESS_RATE_SERIES,
        "expr": f"sum by ({BY}) (rate(nv_inference_request_success[{WINDOW}]))",
    },
    {
        "record": "model_version_track:nv_inference_request_failure:rate1m",
        "expr": f"sum by ({BY}) (rate(nv_inference_request_failure[{WINDOW}]))",
    },
    {
        "record": "model_version_track:nv_inference_request_failure:ratio_rate1m",
        "expr": (
            "model_version_track:nv_inference_request_failure:rate1m / ("
            f"model_version_track:nv_inference_request_failure:rate1m + {SUCCESS_RATE_SERIES})"
        ),
    },
    {
        # NVIDIA's autoscaling signal: time queued per unit of time computing.
        "record": QUEUE_PER_COMPUTE_SERIES,
        "expr": (
            f"sum by ({BY}) (rate(nv_inference_queue_duration_us[{WINDOW}])) / "
            f"sum by ({BY}) (rate(nv_inference_compute_infer_duration_us[{WINDOW}]))"
        ),
    },
    {
        # A summary's quantiles cannot be averaged across pods: the worst pod's.
        "record": P99_SERIES,
        "expr": f'max by ({BY}) (nv_inference_request_summary_us{{quantile="0.99"}})',
    },
    {
        "record": P50_SERIES,
        "expr": f'max by ({BY}) (nv_inference_request_summary_us{{quantile="0.5"}})',
    },
]
RECORDING_RULES: dict[str, Any] = {"groups": [{"name": "dogs-cats-triton", "rules": RULES}]}
SCRAPE_JOB = "triton"


def while_scraped(expr: str) -> str:
    """`expr` kept only where a Triton of its namespace and track is scraped now. A rate over
    the last minute outlives the pods it measured: once the last one is gone, `up` goes with
    it (a staleness marker), while the rate goes on reporting their load for up to a minute."""
    return f'({expr}) and on(namespace, track) (up{{job="{SCRAPE_JOB}"}} == 1)'


class MonitoringError(ProjectError, RuntimeError):
    """Prometheus did not start, or refused a query; the message says why."""


def prometheus_config(scrape_configs: list[dict[str, Any]], rules_file: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [rules_file],
        "scrape_configs": scrape_configs,
    }


def local_scrape(triton_metrics: str) -> list[dict[str, Any]]:
    """The local tritonserver at `triton_metrics` (host:port): the one, stable, track."""
    return [
        {
            "job_name": SCRAPE_JOB,
            "static_configs": [{"targets": [triton_metrics], "labels": {"track": "stable"}}],
        }
    ]


# The pod label saying which track a Triton pod serves: `stable` (the Deployment's pods) or `canary`.
TRACK_LABEL = "dogs-cats-triton/track"
PROMETHEUS_PORT = 9090


def kubernetes_scrape() -> list[dict[str, Any]]:
    """Every Triton pod of the project in any namespace, found through the API (pod role), its
    metrics port scraped, and each series labelled with the pod, its namespace and its track.
    A terminating pod is scraped to its end (the EndpointSlice role could drop it at once):
    the run's figures count what it serves in its shutdown."""

    def label(name: str) -> str:  # how Prometheus spells a pod label in its metadata
        return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in name)

    return [
        {
            "job_name": SCRAPE_JOB,
            "kubernetes_sd_configs": [{"role": "pod"}],
            "relabel_configs": [
                {
                    "source_labels": [
                        label("app.kubernetes.io/part-of"),
                        label("app.kubernetes.io/component"),
                    ],
                    "regex": "dogs-cats-triton;serving",
                    "action": "keep",
                },
                {
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": "metrics",
                    "action": "keep",
                },
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": [label(TRACK_LABEL)], "target_label": "track"},
            ],
        }
    ]


def prometheus_manifests(namespace: str, image: str) -> list[dict[str, Any]]:
    """Prometheus as a cluster component: allowed to list and watch pods (nothing else), its
    config and rules in a ConfigMap, its data in an emptyDir, a ClusterIP Service on 9090."""
    name = "prometheus"
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "dogs-cats-triton"}
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    config = prometheus_config(kubernetes_scrape(), "/etc/prometheus/rules.yml")
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"{namespace}-{name}", "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{namespace}-{name}", "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{namespace}-{name}",
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {
                "prometheus.yml": json.dumps(config, indent=2),
                "rules.yml": json.dumps(RECORDING_RULES, indent=2),
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                # One writer of the data folder at a time.
                "strategy": {"type": "Recreate"},
                "template": {
                    "metadata": {
                        "labels": labels,
                        # A new config rolls the pod (Prometheus reads its files at start).
                        "annotations": {"dogs-cats-triton/config": _digest([config, RECORDING_RULES])},
                    },
                    "spec": {
                        "serviceAccountName": name,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65534,
                            "runAsGroup": 65534,
                            "fsGroup": 65534,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": name,
                                "image": image,
                                "args": [
                                    "--config.file=/etc/prometheus/prometheus.yml",
                                    "--storage.tsdb.path=/data",
                                    "--storage.tsdb.retention.time=2d",
                                    f"--web.listen-address=:{PROMETHEUS_PORT}",
                                ],
                                "ports": [{"name": "http", "containerPort": PROMETHEUS_PORT}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/-/ready", "port": "http"},
                                    "periodSeconds": 5,
                                },
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "256Mi"},
                                    "limits": {"memory": "1Gi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/prometheus", "readOnly": True},
                                    {"name": "data", "mountPath": "/data"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": name}},
                            {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "type": "ClusterIP",
                "selector": labels,
                "ports": [{"name": "http", "port": PROMETHEUS_PORT, "targetPort": "http"}],
            },
        },
    ]


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PrometheusApi:
    """Prometheus' HTTP API at `url` (http://host:port)."""

    url: str

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=3) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's samples: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(address, timeout=10) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as refused:
            raise MonitoringError(f"Prometheus refused {promql!r}: {refused.read()[:500]!r}") from refused
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def served_since(counter: str, selector: str, window_s: int) -> str:
    """What `counter` counted over the last `window_s` seconds, per version and track: each
    series' last value in the window less its value before it, or less 0 for a series born
    within it. Pods gone since (a retired canary's) still count, and so does what a new pod
    served before its first scrape (the deploy's smoke test), which increase() would miss by
    taking that scrape as its baseline."""
    last = f"max_over_time({counter}{selector}[{window_s}s])"
    before = f"last_over_time({counter}{selector}[5m] offset {window_s}s)"
    return f"sum by (version, track) ({last} - ({before} or {last} * 0))"


def serving_figures(
    api: PrometheusApi, model_name: str, window_s: int, settle_s: float = 30.0
) -> dict[str, Any]:
    """What `model_name` served over the last `window_s` seconds (a run's), per version and
    track: requests and failures, and the recorded latency quantiles' median (p50) and worst
    (p99) over the window, in microseconds. First waits (up to `settle_s`) for a scrape and a
    rule evaluation after the call, so the run's last requests are counted."""
    model = f'{{model="{model_name}"}}'
    asked = time.time()
    recorded = f"max(timestamp({SUCCESS_RATE_SERIES}{model}))"

    def settled() -> bool:
        return any(float(s["value"][1]) > asked + SCRAPE_INTERVAL_S for s in api.query(recorded))

    try:
        wait_for(f"Prometheus to record {model_name} after {asked:.0f}", settled, settle_s, interval_s=1)
    except ProcessFailed as late:
        log.warning("%s; the serving figures may miss the last seconds", late)
    # A summary's quantiles are NaN while it saw no request lately: kept out (>= 0 drops NaN).
    window = f"[{max(window_s, 60)}s:{SCRAPE_INTERVAL}]"
    queries = {
        "requests": served_since("nv_inference_request_success", model, window_s),
        "failures": served_since("nv_inference_request_failure", model, window_s),
        "p50_us": f"max by (version, track) (quantile_over_time(0.5, ({P50_SERIES}{model} >= 0){window}))",
        "p99_us": f"max by (version, track) (max_over_time(({P99_SERIES}{model} >= 0){window}))",
    }
    versions: dict[str, dict[str, Any]] = {}
    for figure, promql in queries.items():
        for sample in api.query(promql):
            labels = sample["metric"]
            key = f"{labels.get('version', '?')}/{labels.get('track', '?')}"
            value = float(sample["value"][1])
            versions.setdefault(key, {})[figure] = None if math.isnan(value) else round(value)
    return {"prometheus": api.url, "window_s": window_s, "by_version_and_track": versions}


@dataclass(frozen=True)
class LocalPrometheus:
    """Prometheus beside the local Airflow and tritonserver, on 127.0.0.1 only, its data,
    config and log under `home`."""

    home: Path
    binary: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def process(self) -> Supervised:
        return Supervised("prometheus", self.home / "prometheus.pid", self.home / "prometheus.log")

    def start(self, scrape_configs: list[dict[str, Any]], timeout_s: float = 60.0) -> PrometheusApi:
        """Start it (unless it runs) scraping what `scrape_configs` name; wait until ready."""
        api = PrometheusApi(self.url)
        if self.process().pid() is not None:
            return api
        binary = shutil.which(self.binary)
        if binary is None:
            raise MonitoringError(
                f"no Prometheus at {self.binary!r} (DOGS_CATS_PROMETHEUS_BINARY): make prometheus builds one"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        rules = self.home / "rules.yml"
        rules.write_text(json.dumps(RECORDING_RULES, indent=2))  # YAML is a superset of JSON
        config = self.home / "prometheus.yml"
        config.write_text(json.dumps(prometheus_config(scrape_configs, str(rules)), indent=2))
        self.process().start(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.home / 'data'}",
                "--storage.tsdb.retention.time=7d",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )
        self.process().wait_until_ready(api.ready, timeout_s, MonitoringError)
        log.info("Prometheus on %s scraping %s", self.url, [job["job_name"] for job in scrape_configs])
        return api

    def stop(self) -> bool:
        return self.process().stop(grace_s=10)


def prometheus_from_environment(environment: Environment) -> LocalPrometheus:
    return LocalPrometheus(
        environment.state_dir / "prometheus", environment.prometheus_binary, environment.prometheus_port
    )


def start_local_prometheus(environment: Environment) -> PrometheusApi:
    """`make up`'s and `make demo`'s Prometheus, scraping the local tritonserver's metrics port."""
    triton_metrics = f"127.0.0.1:{environment.triton_metrics_port}"
    return prometheus_from_environment(environment).start(local_scrape(triton_metrics))
