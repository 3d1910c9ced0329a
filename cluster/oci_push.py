"""Single-binary OCI images, pushed to the local registry over its HTTP API (OCI distribution spec).

No registry outside this machine is reachable, so the pod sandbox image (and the
small images the cluster tests roll out) are one static Go binary each, packed
here into a one-layer OCI image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.request
from pathlib import Path


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
    registry: str, repository: str, tag: str, binary: Path, args: tuple[str, ...] = ()
) -> str:
    """Push an image whose entrypoint is `binary` (at /<name>) to http://<registry>; returns its reference."""
    entrypoint = f"/{binary.name}"
    layer, tar_bytes = _layer(binary, entrypoint)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": [entrypoint], "Cmd": list(args), "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(tar_bytes)]},
        },
        sort_keys=True,
    ).encode()
    base = f"http://{registry}/v2/{repository}"
    for blob in (layer, config):
        _upload_blob(base, blob)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
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
    _put(f"{base}/manifests/{tag}", manifest, "application/vnd.oci.image.manifest.v1+json")
    return f"{registry}/{repository}:{tag}"


def _upload_blob(base: str, blob: bytes) -> None:
    """A monolithic upload: POST for a session, PUT the bytes with their digest."""
    start = urllib.request.Request(f"{base}/blobs/uploads/", data=b"", method="POST")
    with urllib.request.urlopen(start, timeout=30) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = base.split("/v2/")[0] + location
    separator = "&" if "?" in location else "?"
    _put(f"{location}{separator}digest={_digest(blob)}", blob, "application/octet-stream")


def _put(url: str, data: bytes, content_type: str) -> None:
    request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60):
        pass
