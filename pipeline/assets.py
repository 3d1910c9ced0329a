"""What each stage writes, declared as Airflow Assets.

The UI's asset graph shows the lineage (dataset -> model -> repository version
-> served model -> predictions), each asset event carries the URIs of what was
written, and `dogs_cats_batch` is scheduled on SERVED_MODEL: a new deployment
re-classifies the standing input.

A run writes under its own `data_bucket`, so an asset names a role, not a
location; the event's extra says where this time.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, get_current_context

from deploy import Endpoint

GROUP = "dogs_cats"
DATASET = Asset(name="dogs_cats.dataset", uri="dogs-cats://dataset", group=GROUP)
MODEL = Asset(name="dogs_cats.model", uri="dogs-cats://model", group=GROUP)
REPOSITORY_VERSION = Asset(
    name="dogs_cats.repository_version", uri="dogs-cats://repository-version", group=GROUP
)
SERVED_MODEL = Asset(name="dogs_cats.served_model", uri="dogs-cats://served-model", group=GROUP)
PREDICTIONS = Asset(name="dogs_cats.predictions", uri="dogs-cats://predictions", group=GROUP)


# The dogs_cats task that weighs the new model against the served one, and its verdict's XCom key.
CHAMPION_TASK = "challenge_champion"
VERDICT_XCOM = "verdict"


def annotate(asset: Asset, **extra: Any) -> None:
    """Attach `extra` to the event the running task emits for `asset` (one of its outlets)."""
    get_current_context()["outlet_events"][asset].extra = extra


def annotate_served(endpoint: Endpoint, **extra: Any) -> None:
    """The SERVED_MODEL event: where the model answers, and the champion/challenger verdict
    that let it replace the one served before."""
    annotate(
        SERVED_MODEL,
        url=endpoint.url,
        model=endpoint.model_name,
        version=endpoint.version,
        champion=champion_verdict(),
        **extra,
    )


def champion_verdict() -> dict[str, Any] | None:
    """This run's champion/challenger verdict; None in a DAG without that task."""
    context = get_current_context()
    if CHAMPION_TASK not in context["dag"].task_ids:
        return None
    verdict: dict[str, Any] | None = context["ti"].xcom_pull(task_ids=CHAMPION_TASK, key=VERDICT_XCOM)
    return verdict
