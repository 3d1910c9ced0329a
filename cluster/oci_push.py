"""Single-binary OCI images, pushed to the local registry over its HTTP API (OCI distribution spec).

No registry outside this machine is reachable, so the pod sandbox image (and the
small images the cluster tests roll out) are one static Go binary each, packed
here into a one-layer OCI image.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RegistryCredentials:
    """An account of the cluster's registry (its htpasswd file)."""

    username: str
    password: str

    def authorization(self) -> str:
        """The HTTP Basic header value the registry's htpasswd access controller reads."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def docker_config(self, registry: str) -> str:
        """A `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson`: what `docker login`
        writes, and what BuildKit and the kubelet read."""
        auth = self.authorization().removeprefix("Basic ")
        entry = {"username": self.username, "password": self.password, "auth": auth}
        return json.dumps({"auths": {registry: entry}})


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(binary: Path, path_in_image: str) -> tuple[bytes, bytes]:
    """(gzipped layer, uncompressed tar): the binary alone, mode 0755, owned by root, timestamps zero."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(path_in_image.lstrip("/"))
        data = binary.read_bytes()
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), tar_bytes


def push_binary_image(
    registry: str,
    repository: str,
    tag: str,
    binary: Path,
    *,
    credentials: RegistryCredentials,
) -> str:
    """Push an image whose entrypoint is `binary` (at /<name>) to http://<registry> as the
    `credentials` account; returns its reference, `name:tag@sha256:...`."""
    entrypoint = f"/{binary.name}"
    layer, tar_bytes = _layer(binary, entrypoint)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": [entrypoint], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(tar_bytes)]},
        },
        sort_keys=True,
    ).encode()
    base = f"http://{registry}/v2/{repository}"
    headers = {"Authorization": credentials.authorization()}
    for blob in (layer, config):
        _upload_blob(base, blob, headers)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    _put(f"{base}/manifests/{tag}", manifest, {**headers, "Content-Type": OCI_MANIFEST})
    # Pinned to the digest: the node keeps images by reference, and a tag may be pushed again.
    return f"{registry}/{repository}:{tag}@{_digest(manifest)}"


def _upload_blob(base: str, blob: bytes, headers: dict[str, str]) -> None:
    """A monolithic upload: POST for a session, PUT the bytes with their digest."""
    start = urllib.request.Request(f"{base}/blobs/uploads/", data=b"", method="POST", headers=headers)
    with urllib.request.urlopen(start, timeout=30) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = base.split("/v2/")[0] + location
    separator = "&" if "?" in location else "?"
    _put(
        f"{location}{separator}digest={_digest(blob)}",
        blob,
        {**headers, "Content-Type": "application/octet-stream"},
    )


def _put(url: str, data: bytes, headers: dict[str, str]) -> None:
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=60):
        pass
