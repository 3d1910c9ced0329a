"""The canary's analysis: how Prometheus' figures become a verdict, and how many pods take
the asked share. The whole canary runs on the real cluster in tests/cluster/test_images.py."""

from __future__ import annotations

import pytest

from core.settings import CanaryParams
from deploy.canary import CanaryFigures, Verdict, canary_replicas, judge

PARAMS = CanaryParams(canary_min_requests=20, canary_max_failure_ratio=0.01, canary_max_p99_ms=1000)


def _figures(**overrides: float | None) -> CanaryFigures:
    figures = {"requests": 400, "failures": 0, "p99_ms": 12.0, "stable_p99_ms": 10.0} | overrides
    return CanaryFigures(**figures)  # type: ignore[arg-type]


def test_a_canary_within_every_limit_is_promoted() -> None:
    verdict = judge(_figures(), PARAMS, version=3, share=0.5)
    assert verdict.promoted
    assert [check.metric for check in verdict.checks] == [
        "requests",
        "failure ratio",
        "p99 ms",
        "p99 ms vs stable",
    ]
    assert verdict.summary().startswith(
        "canary of version 3 (50% of the traffic for 120 s) promoted: requests 400 >= 20"
    )


@pytest.mark.parametrize(
    ("overrides", "failed"),
    [
        ({"failures": 40}, "failure ratio 0.1 > 0.01"),
        ({"p99_ms": 1500.0, "stable_p99_ms": 1400.0}, "p99 ms 1500 > 1000"),
        ({"p99_ms": 400.0}, "p99 ms vs stable 400 > 60"),  # 2x stable is 20 ms; the noise allows 60
        ({"requests": 5, "failures": 0}, "requests 5 < 20"),
    ],
)
def test_each_failed_check_aborts_and_is_named_with_its_value_and_limit(overrides: dict, failed: str) -> None:
    verdict = judge(_figures(**overrides), PARAMS, version=3, share=0.5)
    assert not verdict.promoted
    assert verdict.summary() == f"canary of version 3 (50% of the traffic for 120 s) aborted: {failed}"


def test_latency_is_compared_with_the_stable_pods_only_beyond_the_noise() -> None:
    assert judge(_figures(p99_ms=55.0, stable_p99_ms=5.0), PARAMS, 3, 0.5).promoted
    assert (
        judge(_figures(p99_ms=300.0, stable_p99_ms=100.0), PARAMS, 3, 0.5)
        .summary()
        .endswith("p99 ms vs stable 300 > 200")
    )


def test_a_canary_with_no_request_is_aborted_for_want_of_evidence() -> None:
    verdict = judge(_figures(requests=0, p99_ms=None), PARAMS, 3, 0.5)
    assert [str(check) for check in verdict.checks] == ["requests 0 < 20"]
    assert not verdict.promoted


def test_without_a_stable_latency_only_the_fixed_limit_applies() -> None:
    verdict = judge(_figures(stable_p99_ms=None), PARAMS, 3, 0.5)
    assert "p99 ms vs stable" not in verdict.summary()
    assert verdict.promoted


def test_a_verdict_survives_a_trigger_event() -> None:
    verdict = judge(_figures(failures=40), PARAMS, 3, 0.25)
    event = verdict.to_dict()
    assert event["promoted"] is False
    assert event["summary"] == verdict.summary()
    assert Verdict.from_dict(event) == verdict


@pytest.mark.parametrize(
    ("share", "stable", "canary"),
    [(0.5, 1, 1), (0.5, 2, 2), (0.25, 3, 1), (0.25, 1, 1), (0.1, 4, 1), (0.5, 5, 5)],
)
def test_the_share_is_set_by_replica_counts_with_one_canary_pod_at_least(
    share: float, stable: int, canary: int
) -> None:
    assert canary_replicas(share, stable) == canary
