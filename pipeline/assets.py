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

GROUP = "dogs_cats"
DATASET = Asset(name="dogs_cats.dataset", uri="dogs-cats://dataset", group=GROUP)
MODEL = Asset(name="dogs_cats.model", uri="dogs-cats://model", group=GROUP)
REPOSITORY_VERSION = Asset(
    name="dogs_cats.repository_version", uri="dogs-cats://repository-version", group=GROUP
)
SERVED_MODEL = Asset(name="dogs_cats.served_model", uri="dogs-cats://served-model", group=GROUP)
PREDICTIONS = Asset(name="dogs_cats.predictions", uri="dogs-cats://predictions", group=GROUP)


def annotate(asset: Asset, **extra: Any) -> None:
    """Attach `extra` to the event the running task emits for `asset` (one of its outlets)."""
    get_current_context()["outlet_events"][asset].extra = extra
