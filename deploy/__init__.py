"""Stage 4: serve a model repository version, locally or on Kubernetes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    """Where a deployed version answers: what batch inference and users connect to."""

    url: str
    model_name: str
    version: int
    grpc_url: str = ""
