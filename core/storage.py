"""The storage seam: one small interface over local folders and gs:// URIs.

Nothing else in the project touches google-cloud-storage. Every write is
atomic (a local temp file renamed into place; a GCS object appears whole), so
a reader never sees half an object and a crashed step leaves nothing partial.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from core.errors import ProjectError

if TYPE_CHECKING:
    from google.cloud import storage as gcs

GCS_SCHEME = "gs://"


class Storage(Protocol):
    def read_bytes(self, uri: str) -> bytes: ...

    def write_bytes(self, uri: str, data: bytes) -> None: ...

    def create(self, uri: str, data: bytes) -> bool:
        """Write `uri` only if nothing is there yet; False when another writer got there first."""
        ...

    def exists(self, uri: str) -> bool: ...

    def list_files(self, prefix: str) -> list[str]:
        """Every object (file) below `prefix`, recursively, as full URIs, sorted."""
        ...

    def iter_files(self, prefix: str) -> Iterator[str]:
        """Like list_files, one at a time: a listing of millions never sits in memory."""
        ...

    def download_file(self, uri: str, path: Path) -> None: ...

    def upload_file(self, path: Path, uri: str) -> None: ...

    def open_writer(self, uri: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """Write a large object bit by bit; it appears whole when the block ends, or not at all."""
        ...

    def delete(self, uri: str) -> None:
        """Remove one object; a missing one is not an error."""
        ...


class LocalStorage:
    """Plain paths (or file:// URIs) on this machine."""

    @staticmethod
    def _path(uri: str) -> Path:
        return Path(uri.removeprefix("file://"))

    def read_bytes(self, uri: str) -> bytes:
        return self._path(uri).read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        with _replaced_atomically(self._path(uri)) as out:
            out.write(data)

    def create(self, uri: str, data: bytes) -> bool:
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.") as tmp:
            tmp.write(data)
            tmp.flush()
            os.chmod(tmp.name, FILE_MODE)
            try:
                os.link(tmp.name, path)  # atomic, and refuses to replace an existing file
            except FileExistsError:
                return False
        return True

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def list_files(self, prefix: str) -> list[str]:
        return sorted(self.iter_files(prefix))

    def iter_files(self, prefix: str) -> Iterator[str]:
        """Depth first, each folder's entries sorted: the same order on every call."""
        root = self._path(prefix)
        if not root.is_dir():
            return
        base = prefix.rstrip("/")
        pending = [root]
        while pending:
            folder = pending.pop()
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_file():
                    yield f"{base}/{Path(entry.path).relative_to(root).as_posix()}"
            folders = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
            pending.extend(Path(entry.path) for entry in reversed(folders))

    def download_file(self, uri: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(uri), path)

    def upload_file(self, path: Path, uri: str) -> None:
        with path.open("rb") as source, self.open_writer(uri) as out:
            shutil.copyfileobj(source, out)

    def open_writer(self, uri: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return _replaced_atomically(self._path(uri))

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)


# Temp files are created 0600; what lands in a bucket folder is readable like any file a
# user writes (a training pod running as another uid reads the staged dataset).
FILE_MODE = 0o644


@contextlib.contextmanager
def _replaced_atomically(path: Path) -> Iterator[IO[bytes]]:
    """A hidden temp file beside `path`, renamed over it when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            yield tmp
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, FILE_MODE)
    os.replace(tmp.name, path)


def _upload_retry() -> Any:
    """google-cloud-storage's default retry, imported when a gs:// object is written: a task
    that never touches GCS (every local run's) does not pay the library's import at start."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


class GCSStorage:
    """gs://bucket/key through the official client (honours STORAGE_EMULATOR_HOST)."""

    def __init__(self, client: gcs.Client | None = None) -> None:
        self._client = client

    @property
    def client(self) -> gcs.Client:
        if self._client is None:
            self._client = _default_gcs_client()
        return self._client

    @staticmethod
    def split(uri: str) -> tuple[str, str]:
        bucket, _, key = uri.removeprefix(GCS_SCHEME).partition("/")
        if not bucket:
            raise ValueError(f"not a gs:// URI with a bucket: {uri!r}")
        return bucket, key

    def _blob(self, uri: str) -> gcs.Blob:
        bucket, key = self.split(uri)
        return self.client.bucket(bucket).blob(key)

    def read_bytes(self, uri: str) -> bytes:
        data: bytes = self._blob(uri).download_as_bytes()
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        # Whole objects of deterministic content: retrying a failed upload is safe.
        self._blob(uri).upload_from_string(data, retry=_upload_retry())

    def create(self, uri: str, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        try:
            # Generation 0 means "no live object": GCS itself arbitrates between writers.
            self._blob(uri).upload_from_string(data, if_generation_match=0, retry=_upload_retry())
        except PreconditionFailed:
            return False
        return True

    def exists(self, uri: str) -> bool:
        return bool(self._blob(uri).exists())

    def list_files(self, prefix: str) -> list[str]:
        return sorted(self.iter_files(prefix))

    def iter_files(self, prefix: str) -> Iterator[str]:
        """GCS lists in key order, a page at a time."""
        bucket, key = self.split(prefix)
        key = key.rstrip("/") + "/" if key else ""
        for blob in self.client.list_blobs(bucket, prefix=key):
            if not blob.name.endswith("/"):
                yield f"{GCS_SCHEME}{bucket}/{blob.name}"

    def download_file(self, uri: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._blob(uri).download_to_filename(str(path))

    def upload_file(self, path: Path, uri: str) -> None:
        self._blob(uri).upload_from_filename(str(path), retry=_upload_retry())

    @contextlib.contextmanager
    def open_writer(self, uri: str) -> Iterator[IO[bytes]]:
        # Spooled to a local temp file, then one upload: GCS shows the object only when complete.
        with tempfile.NamedTemporaryFile(prefix="dogs-cats-", suffix=".part") as tmp:
            yield tmp
            tmp.flush()
            self.upload_file(Path(tmp.name), uri)

    def delete(self, uri: str) -> None:
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound):
            self._blob(uri).delete()


@functools.cache
def _default_gcs_client() -> gcs.Client:
    from google.cloud import storage as gcs

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # The emulator takes anonymous requests; a project id avoids a metadata lookup.
        from google.auth.credentials import AnonymousCredentials

        return gcs.Client(project="emulator", credentials=AnonymousCredentials())
    return gcs.Client()


_LOCAL = LocalStorage()
_GCS = GCSStorage()


def storage_for(uri: str) -> Storage:
    return _GCS if uri.startswith(GCS_SCHEME) else _LOCAL


def is_remote(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


class NotFound(ProjectError, FileNotFoundError):
    """A file or object that is not there, named the same way for folders and buckets."""


def read_bytes(uri: str) -> bytes:
    from google.api_core.exceptions import NotFound as ObjectNotFound

    try:
        return storage_for(uri).read_bytes(uri)
    except (FileNotFoundError, ObjectNotFound) as missing:
        raise NotFound(f"{uri} does not exist") from missing


def write_bytes(uri: str, data: bytes) -> None:
    storage_for(uri).write_bytes(uri, data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def create(uri: str, data: bytes) -> bool:
    return storage_for(uri).create(uri, data)


def exists(uri: str) -> bool:
    return storage_for(uri).exists(uri)


def list_files(prefix: str) -> list[str]:
    return storage_for(prefix).list_files(prefix)


def iter_files(prefix: str) -> Iterator[str]:
    return storage_for(prefix).iter_files(prefix)


def download_file(uri: str, path: Path) -> None:
    storage_for(uri).download_file(uri, path)


def open_writer(uri: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    return storage_for(uri).open_writer(uri)


def upload_file(path: Path, uri: str) -> None:
    storage_for(uri).upload_file(path, uri)


def delete(uri: str) -> None:
    storage_for(uri).delete(uri)


def relative_key(uri: str, prefix: str) -> str:
    return uri[len(prefix.rstrip("/")) + 1 :]


def download_tree(prefix: str, local_dir: Path) -> Path:
    """Copy every object below `prefix` into `local_dir`, keeping relative paths."""
    store = storage_for(prefix)
    for uri in store.list_files(prefix):
        store.download_file(uri, local_dir / relative_key(uri, prefix))
    return local_dir


def upload_tree(local_dir: Path, prefix: str) -> list[str]:
    """Copy a local folder below `prefix`; returns the written URIs."""
    store = storage_for(prefix)
    written = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        uri = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
        store.upload_file(path, uri)
        written.append(uri)
    return written


@contextlib.contextmanager
def local_tree(prefix: str) -> Iterator[Path]:
    """A local folder holding the tree at `prefix`: the folder itself when it is
    already local, else a temporary download removed afterwards."""
    if not is_remote(prefix):
        yield LocalStorage._path(prefix)
        return
    with tempfile.TemporaryDirectory(prefix="dogs-cats-") as tmp:
        yield download_tree(prefix, Path(tmp))
