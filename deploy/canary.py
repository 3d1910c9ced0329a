"""Cluster path, stage 4 with a canary: a new version serves a share of the traffic before it
serves all of it, and Prometheus' figures for that share decide.

The canary is a second Deployment behind the model's Service, so the share is set by replica
counts (no mesh). Its pods carry the `canary` track, which Prometheus puts on each series;
after the window the analysis compares the canary with fixed limits and with the stable pods,
as Argo Rollouts' analysis does. Promoted, the stable Deployment rolls to the new image (so
`kubectl rollout status / history / undo` see it as a direct rollout) and the canary goes;
aborted, the canary goes and the stable Deployment is untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.constants import HTTP_PORT
from core.settings import CanaryParams, Environment
from deploy import Endpoint
from deploy.idle import WakeHold, held_awake
from deploy.kubernetes import ServingSpec, canary_manifests
from deploy.monitoring import P99_SERIES, MonitoringError, PrometheusApi, served_since
from deploy.rollout import (
    ClusterApi,
    DeploymentFailed,
    SmokeTest,
    apply_all,
    finish_serving,
    smoke_images,
    smoke_test,
    start_serving,
    wait_for_rollout,
)
from model_repository.repository import RepositoryVersion

log = logging.getLogger(__name__)

# Two pods' p99 latencies closer than this differ by noise on a shared node (a scheduler
# quantum, a collector pause), not by the model: the comparison with the stable pods allows it.
P99_NOISE_MS = 50.0


@dataclass(frozen=True)
class Check:
    """One figure of the canary against its limit (an upper bound, or a lower one)."""

    metric: str
    value: float
    limit: float
    at_least: bool = False

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def __str__(self) -> str:
        relations = (">=", "<") if self.at_least else ("<=", ">")
        relation = relations[0] if self.passed else relations[1]
        return f"{self.metric} {self.value:.4g} {relation} {self.limit:.4g}"


@dataclass(frozen=True)
class CanaryFigures:
    """What Prometheus saw the canary do over the window: its requests (failed ones included),
    its failures, and the p99 latency of its pods and of the stable pods (None: no sample)."""

    requests: int
    failures: int
    p99_ms: float | None
    stable_p99_ms: float | None


@dataclass(frozen=True)
class Verdict:
    version: int
    share: float
    window_s: int
    checks: tuple[Check, ...]

    @property
    def promoted(self) -> bool:
        return all(check.passed for check in self.checks)

    def summary(self) -> str:
        failed = [check for check in self.checks if not check.passed]
        outcome = "promoted" if self.promoted else "aborted"
        return (
            f"canary of version {self.version} ({self.share:.0%} of the traffic for {self.window_s} s) "
            f"{outcome}: " + "; ".join(str(check) for check in failed or self.checks)
        )

    def to_dict(self) -> dict[str, Any]:
        """What a trigger event and the run's report carry."""
        return {**dataclasses.asdict(self), "promoted": self.promoted, "summary": self.summary()}

    @classmethod
    def from_dict(cls, verdict: dict[str, Any]) -> Verdict:
        return cls(
            version=verdict["version"],
            share=verdict["share"],
            window_s=verdict["window_s"],
            checks=tuple(Check(**check) for check in verdict["checks"]),
        )


def judge(figures: CanaryFigures, params: CanaryParams, version: int, share: float) -> Verdict:
    """Every check the figures allow: too few requests is no evidence, and fails."""
    checks = [Check("requests", figures.requests, params.canary_min_requests, at_least=True)]
    if figures.requests:
        ratio = figures.failures / figures.requests
        checks.append(Check("failure ratio", ratio, params.canary_max_failure_ratio))
    if figures.p99_ms is not None:
        checks.append(Check("p99 ms", figures.p99_ms, params.canary_max_p99_ms))
        if figures.stable_p99_ms is not None:
            stable = figures.stable_p99_ms
            limit = max(stable * params.canary_max_p99_vs_stable, stable + P99_NOISE_MS)
            checks.append(Check("p99 ms vs stable", figures.p99_ms, limit))
    return Verdict(version=version, share=share, window_s=params.canary_window_s, checks=tuple(checks))


def measure(api: PrometheusApi, model_name: str, version: int, window_s: int) -> CanaryFigures:
    """The canary's figures over the last `window_s` seconds, from Triton's counters and the
    recorded p99 (Triton's summary, over its own last minute) of each track."""
    model = f'model="{model_name}"'
    own = f'{{{model}, version="{version}", track="canary"}}'

    def value(promql: str) -> float | None:
        values = [float(sample["value"][1]) for sample in api.query(promql)]
        return next((v for v in values if not math.isnan(v)), None)

    def p99_ms(selector: str) -> float | None:
        us = value(f"max({P99_SERIES}{selector} >= 0)")  # NaN while a pod saw no request lately
        return None if us is None else us / 1000

    successes = value(f"sum({served_since('nv_inference_request_success', own, window_s)})") or 0
    failures = value(f"sum({served_since('nv_inference_request_failure', own, window_s)})") or 0
    return CanaryFigures(
        requests=round(successes + failures),
        failures=round(failures),
        p99_ms=p99_ms(own),
        stable_p99_ms=p99_ms(f'{{{model}, track="stable"}}'),
    )


def judge_canary(
    api: PrometheusApi, model_name: str, version: int, params: CanaryParams, share: float
) -> Verdict:
    return judge(measure(api, model_name, version, params.canary_window_s), params, version, share)


def canary_replicas(share: float, stable_replicas: int) -> int:
    """Canary pods that take about `share` of the traffic beside `stable_replicas`: one at least."""
    return max(1, round(share * stable_replicas / (1 - share)))


def start_canary(
    api: ClusterApi,
    version: RepositoryVersion,
    image: str,
    smoke_images_uri: str,
    environment: Environment,
    params: CanaryParams,
) -> tuple[ServingSpec, float] | None:
    """Apply a canary of `image` beside the stable Deployment; (its spec, its share of the
    traffic), or None where the rollout goes direct: canaries turned off, no stable Deployment
    to compare with, or one idling at zero (no live traffic to judge on). Refuses before
    applying anything when it could not be judged."""
    if not params.canary:
        return None
    smoke_images(smoke_images_uri)
    spec = ServingSpec.from_environment(
        environment, image=image, model_name=version.model_name, model_version=version.version
    )
    stable = api.find_deployment(spec.namespace, spec.name)
    if stable is None:
        log.info("no stable Deployment %s yet: the first version rolls out directly", spec.name)
        return None
    stable_replicas = int(stable["spec"].get("replicas", 1))
    if stable_replicas == 0:
        log.info(
            "%s idles at zero: no live traffic to judge a canary on, so it rolls out directly", spec.name
        )
        return None
    if not environment.prometheus_url:
        raise DeploymentFailed(
            "a canary is judged on Prometheus' figures and DOGS_CATS_PROMETHEUS_URL is empty: "
            "set it, or trigger with canary: false; nothing was applied"
        )
    canary = spec.canary(canary_replicas(params.canary_share, stable_replicas))
    share = canary.replicas / (canary.replicas + stable_replicas)
    apply_all(api, canary_manifests(canary))
    log.info(
        "canary of version %d: %d pod(s) beside %d stable", version.version, canary.replicas, stable_replicas
    )
    return canary, share


def retire_canary(api: ClusterApi, canary: ServingSpec) -> None:
    """Delete the canary's Deployment and Service; its pods drain as any Deployment's do."""
    for manifest in reversed(canary_manifests(canary)):
        if api.delete(manifest):
            log.info("deleted %s/%s", manifest["kind"], manifest["metadata"]["name"])


def canary_answers(
    api: ClusterApi,
    canary: ServingSpec,
    smoke_images_uri: str,
    rolled_out: Callable[[], str],
    smoke: SmokeTest,
) -> None:
    """Once `rolled_out` says so, smoke-test the canary through its own Service; on any failure
    the canary goes, and the stable Deployment, untouched, serves on."""
    try:
        log.info("%s", rolled_out())
        url = f"{api.cluster_ip(canary.namespace, canary.object_name)}:{HTTP_PORT}"
        smoke(url, canary.model_name, canary.model_version, smoke_images(smoke_images_uri))
    except Exception as failure:
        retire_canary(api, canary)
        raise DeploymentFailed(
            f"canary of version {canary.model_version} failed: {failure} (the canary was deleted; "
            "the stable Deployment is untouched)"
        ) from failure


def unjudged(api: ClusterApi, canary: ServingSpec, why: str) -> DeploymentFailed:
    """No verdict (Prometheus failed to answer): the canary goes, and here is the error to raise."""
    retire_canary(api, canary)
    return DeploymentFailed(f"canary of version {canary.model_version} could not be judged: {why}")


def act_on(api: ClusterApi, canary: ServingSpec, verdict: Verdict) -> None:
    """An aborted canary goes, and the task fails naming each failed check; a promoted one stays
    until the stable Deployment has rolled to its image."""
    log.info("%s", verdict.summary())
    if verdict.promoted:
        return
    retire_canary(api, canary)
    raise DeploymentFailed(
        f"{verdict.summary()} (the canary was deleted; the stable Deployment is untouched)"
    )


def roll_out(
    api: ClusterApi,
    version: RepositoryVersion,
    image: str,
    smoke_images_uri: str,
    environment: Environment,
    params: CanaryParams,
    *,
    hold: WakeHold,
    smoke: SmokeTest = smoke_test,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 5.0,
) -> tuple[Endpoint, Verdict | None]:
    """The whole deploy, waiting here rather than in the triggerer: the canary where one applies
    (its rollout, smoke test, window and verdict), then the stable Deployment's rollout, held
    awake by `hold` for its smoke test when it idles at zero."""

    def rolled_out(spec: ServingSpec, at_least: int = 0) -> Callable[[], str]:
        timeout_s = environment.rollout_timeout_s
        return lambda: wait_for_rollout(
            api, spec.namespace, spec.object_name, timeout_s=timeout_s, at_least=at_least, poll_s=poll_s
        )

    started = start_canary(api, version, image, smoke_images_uri, environment, params)
    verdict = None
    if started:
        canary, share = started
        canary_answers(api, canary, smoke_images_uri, rolled_out(canary), smoke)
        sleep(params.canary_window_s)
        try:
            prometheus = PrometheusApi(environment.prometheus_url)
            verdict = judge_canary(prometheus, canary.model_name, canary.model_version, params, share)
        except (MonitoringError, OSError) as failure:
            raise unjudged(api, canary, str(failure)) from failure
        act_on(api, canary, verdict)
    spec = start_serving(api, version, image, smoke_images_uri, environment)
    try:
        with held_awake(api, environment, hold) as held:
            rolled = rolled_out(spec, at_least=int(held))
            endpoint = finish_serving(api, spec, smoke_images_uri, environment, rolled, smoke)
    finally:
        if started:
            retire_canary(api, started[0])
    return endpoint, verdict
