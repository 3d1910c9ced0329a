"""Champion and challenger: a new model replaces the served one only when, on the new run's
test split, it is not worse beyond a tolerance.

The champion (the model serving now) is scored through Triton on the very images the
challenger was scored on once, after training chose everything; the challenger's figures are
training's for the precision it will be served at. `judge` says whether to deploy, in words
the task log, the run's report and the served-model asset event all carry.
"""

from __future__ import annotations

from typing import Any

from core.metrics import allowed_loss
from deploy import Endpoint

FIGURES = ("examples", "accuracy", "accuracy_95ci", "log_loss", "roc_auc")


def challenger_figures(metrics: dict[str, Any], precision: str) -> dict[str, Any]:
    """Training's test figures (metrics.json) of the model as it will be served."""
    evaluation = metrics["int8"]["test"] if precision == "int8" else metrics["test"]
    return {key: evaluation[key] for key in FIGURES} | {"precision": precision}


def judge(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    *,
    tolerance: float,
    force: bool,
) -> dict[str, Any]:
    """Whether the challenger is deployed: when nothing is served, when its test accuracy is
    lower than the champion's by no more than `tolerance` or one image, whichever is larger
    (one image is noise at any test size; the INT8 verdict allows the same), or when forced.
    `champion` holds the served model's `version` and its figures on the same images, or
    `unscored` saying why it has none."""
    verdict: dict[str, Any] = {"challenger": challenger, "champion": champion, "tolerance": tolerance}
    if champion is None:
        return verdict | {"deploy": True, "forced": False, "why": "first deployment: no model is served"}
    if "unscored" in champion:
        good_enough = False
        why = f"the served version {champion['version']} cannot be compared: {champion['unscored']}"
    else:
        difference = challenger["accuracy"] - champion["accuracy"]
        allowed = allowed_loss(tolerance, challenger["examples"])
        verdict["difference_points"] = round(100 * difference, 2)
        good_enough = difference >= -allowed - 1e-9  # rounding must not refuse an equal model
        why = (
            f"on {challenger['examples']} test images the new model scores {challenger['accuracy']:.2%}, "
            f"the served version {champion['version']} {champion['accuracy']:.2%} ({100 * difference:+.2f} "
            f"points; {100 * allowed:.2f} lower allowed: champion_tolerance or one image)"
        )
    if good_enough:
        return verdict | {"deploy": True, "forced": False, "why": why}
    if force:
        return verdict | {"deploy": True, "forced": True, "why": f"deployed by force_deploy: {why}"}
    refused = f"not deployed: {why} (force_deploy overrides)"
    return verdict | {"deploy": False, "forced": False, "why": refused}


def score_champion(endpoint: Endpoint, labels: list[str], images_uri: str, output_uri: str) -> dict[str, Any]:
    """The served model's figures on the labelled images under `images_uri`, classified
    through Triton by the batch client (its predictions and report go to `output_uri`)."""
    from client.batch import BatchOptions, run_batch
    from client.triton import served_labels

    champion: dict[str, Any] = {"version": endpoint.version}
    served = list(served_labels(endpoint.url, endpoint.model_name))
    if served != labels:
        return champion | {"unscored": f"it serves labels {served}, the new model {labels}"}
    options = BatchOptions(model_name=endpoint.model_name)
    report = run_batch(endpoint.url, images_uri, output_uri, options, class_names=labels)
    return champion | {key: report["evaluation"][key] for key in FIGURES} | {"report": output_uri}
