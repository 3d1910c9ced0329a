"""KEDA, the autoscaler, from its own manifests: its CRDs, RBAC, the operator, and the metrics
API server that the API server's aggregation layer serves `external.metrics.k8s.io` from.

cluster/build.sh builds both binaries from KEDA's Go module and copies the module's
`config/` folders this reads into `bin/keda-config`; only the images change here (each binary
as a one-file image in the cluster's registry, as the pause image is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KEDA_NAMESPACE = "keda"
# KEDA's config folders in apply order (its config/default kustomization, less the admission
# webhooks, which only validate ScaledObjects as they are created).
CONFIG_FILES = (
    "general/namespace.yaml",
    "crd/bases/keda.sh_scaledobjects.yaml",
    "crd/bases/keda.sh_scaledjobs.yaml",
    "crd/bases/keda.sh_triggerauthentications.yaml",
    "crd/bases/keda.sh_clustertriggerauthentications.yaml",
    "crd/bases/eventing.keda.sh_cloudeventsources.yaml",
    "crd/bases/eventing.keda.sh_clustercloudeventsources.yaml",
    "service_account/service_account.yaml",
    "rbac/role.yaml",
    "rbac/role_binding.yaml",
    "metrics-server/role.yaml",
    "metrics-server/role_binding.yaml",
    "manager/manager.yaml",
    "manager/service.yaml",
    "metrics-server/deployment.yaml",
    "metrics-server/service.yaml",
    "metrics-server/api_service.yaml",
)
KEDA_OPERATOR = "keda-operator"
KEDA_METRICS_SERVER = "keda-metrics-apiserver"
EXTERNAL_METRICS_API = "v1beta1.external.metrics.k8s.io"


def keda_manifests(config: Path, images: dict[str, str]) -> list[dict[str, Any]]:
    """KEDA's manifests from `config` (bin/keda-config), each Deployment's container running
    `images[deployment name]`, pulled only when the node lacks it."""
    manifests: list[dict[str, Any]] = []
    for name in CONFIG_FILES:
        manifests += [document for document in yaml.safe_load_all((config / name).read_text()) if document]
    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            (container,) = manifest["spec"]["template"]["spec"]["containers"]
            container["image"] = images[manifest["metadata"]["name"]]
            container["imagePullPolicy"] = "IfNotPresent"
    return manifests
