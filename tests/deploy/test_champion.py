"""Champion and challenger: the verdict, in figures and in words. Scoring the champion through
a real Triton is the DAG run's part (tests/dags/test_dag_run.py)."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.champion import challenger_figures, judge

FIGURES = {"examples": 400, "accuracy_95ci": [0.9, 0.95], "log_loss": 0.2, "roc_auc": 0.97}


def _figures(accuracy: float, **extra: Any) -> dict[str, Any]:
    return {**FIGURES, "accuracy": accuracy, **extra}


def test_the_first_deployment_has_no_champion_and_says_so() -> None:
    verdict = judge(_figures(0.9), None, tolerance=0.005, force=False)
    assert verdict["deploy"]
    assert verdict["champion"] is None
    assert verdict["why"] == "first deployment: no model is served"


@pytest.mark.parametrize(
    ("challenger", "champion", "deploy"),
    [
        (0.95, 0.94, True),  # better
        (0.935, 0.94, True),  # worse by exactly the tolerance
        (0.9349, 0.94, False),  # worse beyond it
    ],
)
def test_the_challenger_is_deployed_unless_worse_beyond_the_tolerance(
    challenger: float, champion: float, deploy: bool
) -> None:
    verdict = judge(_figures(challenger), _figures(champion, version=3), tolerance=0.005, force=False)
    assert verdict["deploy"] is deploy
    assert verdict["difference_points"] == round(100 * (challenger - champion), 2)
    assert verdict["why"].startswith("on 400 test images the new model scores") is deploy
    if not deploy:
        assert verdict["why"] == (
            "not deployed: on 400 test images the new model scores 93.49%, the served version 3 94.00% "
            "(-0.51 points; 0.50 lower allowed: champion_tolerance or one image) (force_deploy overrides)"
        )


def test_one_image_is_allowed_whatever_the_tolerance() -> None:
    """On 100 test images one image is a point: a rerun of the demo must not lose its deploy to it."""
    champion = {**FIGURES, "examples": 100, "accuracy": 0.98, "version": 1}
    one_worse = judge({**champion, "accuracy": 0.97}, champion, tolerance=0.005, force=False)
    assert one_worse["deploy"]
    assert not judge({**champion, "accuracy": 0.96}, champion, tolerance=0.005, force=False)["deploy"]
    assert judge({**champion, "accuracy": 0.97}, champion, tolerance=0.0, force=False)["deploy"]


def test_force_deploys_a_worse_challenger_and_says_it_was_forced() -> None:
    verdict = judge(_figures(0.80), _figures(0.94, version=3), tolerance=0.005, force=True)
    assert verdict["deploy"]
    assert verdict["forced"]
    assert verdict["why"].startswith("deployed by force_deploy: on 400 test images")
    unforced = judge(_figures(0.95), _figures(0.94, version=3), tolerance=0.005, force=True)
    assert not unforced["forced"], "force changes nothing for a challenger that wins anyway"


def test_a_champion_with_other_labels_is_replaced_only_by_force() -> None:
    champion = {
        "version": 2,
        "unscored": "it serves labels ['cat', 'dog'], the new model ['bird', 'cat', 'dog']",
    }
    refused = judge(_figures(0.99), champion, tolerance=0.005, force=False)
    assert not refused["deploy"]
    assert "the served version 2 cannot be compared: it serves labels" in refused["why"]
    assert judge(_figures(0.99), champion, tolerance=0.005, force=True)["deploy"]


def test_the_challenger_is_judged_at_the_precision_it_will_be_served() -> None:
    metrics = {"test": _figures(0.95), "int8": {"test": _figures(0.948)}}
    assert challenger_figures(metrics, "fp32")["accuracy"] == 0.95
    assert challenger_figures(metrics, "int8") == {**_figures(0.948), "precision": "int8"}
