"""Prometheus reading Triton's metrics: the recording rules the serving decisions use, the
scrape configuration of each platform, the local server, and the query API.

Triton exports per model and version (port 8002): request success and failure counters, the
cumulative time requests spent queued and computing, and, with `summary_latencies`, a
latency summary with quantiles. The rules below turn them into what the autoscaler, the
canary analysis and the run's report read, one series per model, version and track
(`stable`, or `canary` for a canary's pods).
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ProjectError
from core.processes import Supervised
from core.settings import Environment

log = logging.getLogger(__name__)

# The labels every recorded series keeps: Triton's own (model, version) and the pod's track.
BY = "model, version, track"
WINDOW = "1m"  # four scrapes at least: a rate over fewer is noise
SCRAPE_INTERVAL = "5s"
RULES: list[dict[str, str]] = [
    {
        "record": "model_version_track:nv_inference_request_success:rate1m",
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
            "model_version_track:nv_inference_request_failure:rate1m + "
            "model_version_track:nv_inference_request_success:rate1m)"
        ),
    },
    {
        # NVIDIA's autoscaling signal: time queued per unit of time computing.
        "record": "model_version_track:nv_inference_queue_per_compute:ratio_rate1m",
        "expr": (
            f"sum by ({BY}) (rate(nv_inference_queue_duration_us[{WINDOW}])) / "
            f"sum by ({BY}) (rate(nv_inference_compute_infer_duration_us[{WINDOW}]))"
        ),
    },
    {
        # A summary's quantiles cannot be averaged across pods: the worst pod's.
        "record": "model_version_track:nv_inference_request_summary_us:p99",
        "expr": f'max by ({BY}) (nv_inference_request_summary_us{{quantile="0.99"}})',
    },
    {
        "record": "model_version_track:nv_inference_request_summary_us:p50",
        "expr": f'max by ({BY}) (nv_inference_request_summary_us{{quantile="0.5"}})',
    },
]
RECORDING_RULES: dict[str, Any] = {"groups": [{"name": "dogs-cats-triton", "rules": RULES}]}


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
            "job_name": "triton",
            "static_configs": [{"targets": [triton_metrics], "labels": {"track": "stable"}}],
        }
    ]


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

    def start(self, triton_metrics: str, timeout_s: float = 60.0) -> PrometheusApi:
        """Start it (unless it runs) scraping the tritonserver at `triton_metrics`; wait until ready."""
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
        config.write_text(json.dumps(prometheus_config(local_scrape(triton_metrics), str(rules)), indent=2))
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
        log.info("Prometheus on %s scraping %s", self.url, triton_metrics)
        return api

    def stop(self) -> bool:
        return self.process().stop(grace_s=10)


def prometheus_from_environment(environment: Environment) -> LocalPrometheus:
    return LocalPrometheus(
        environment.state_dir / "prometheus", environment.prometheus_binary, environment.prometheus_port
    )


def start_local_prometheus(environment: Environment) -> PrometheusApi:
    """`make up`'s and `make demo`'s Prometheus, scraping the local tritonserver's metrics port."""
    return prometheus_from_environment(environment).start(f"127.0.0.1:{environment.triton_metrics_port}")
