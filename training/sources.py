"""Where staging reads images from: an http(s) archive, a gs:// prefix or a folder.

Archives are downloaded into a cache folder with resume (HTTP Range) and
size/checksum checks, then unpacked member by member: only regular files with
relative paths inside the target are written; absolute or `..` paths
(zip-slip), links and devices are refused and reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from core import storage
from core.errors import ProjectError
from core.policy import AccessPolicy

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DatasetError(ProjectError, ValueError):
    """The source cannot be read; the message says what was found."""


@contextlib.contextmanager
def local_source(
    source: str, cache_dir: Path, policy: AccessPolicy, expected_sha256: str = ""
) -> Iterator[tuple[Path, list[dict]]]:
    """A local folder holding the source's files, and the archive members refused."""
    if source.startswith(("http://", "https://")):
        archive = download(source, cache_dir, policy, expected_sha256)
        with tempfile.TemporaryDirectory(prefix="dogs-cats-source-") as tmp:
            refused = extract(archive, Path(tmp), policy)
            yield Path(tmp), refused
    elif storage.is_remote(source):
        with storage.local_tree(source) as path:
            yield path, []
    else:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise DatasetError(f"source folder {source!r} does not exist")
        yield path, []


def download(url: str, cache_dir: Path, policy: AccessPolicy, expected_sha256: str = "") -> Path:
    """Download `url` into `cache_dir`, resuming a partial file; returns the complete file.

    A file already complete (and matching `expected_sha256`, when given) is reused. The URL,
    and every redirect it answers with, must pass `policy` before a connection is made.
    """
    policy.check_url("source", url)
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    target = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    partial = target.with_name(target.name + ".part")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if target.exists() and _checksum_ok(target, expected_sha256):
        log.info("using cached %s", target)
        return target

    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.build_opener(_CheckedRedirects(policy)).open(request, timeout=60)
    except (urllib.error.URLError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DatasetError(
            f"cannot download {url}: {reason}; without internet, use a local folder or gs:// prefix as source"
        ) from exc
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        if offset:
            log.info("resuming %s at %.1f MB", url, offset / 1e6)
        received = offset
        next_report = 0.0
        with partial.open("ab" if offset else "wb") as out:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    if total and received / total >= next_report:
                        log.info(
                            "downloaded %.1f of %.1f MB (%d%%)",
                            received / 1e6,
                            total / 1e6,
                            100 * received // total,
                        )
                        next_report += 0.1
            except http.client.IncompleteRead as cut:  # keep what arrived; the size check reports it
                out.write(cut.partial)
                received += len(cut.partial)
            except OSError as exc:
                log.warning("download of %s interrupted: %s", url, exc)
    if total is not None and received != total:
        raise DatasetError(
            f"download of {url} is incomplete: {received} of {total} bytes; rerun to resume it"
        )
    if not _checksum_ok(partial, expected_sha256):
        partial.unlink()
        raise DatasetError(
            f"{url} does not match the expected sha256 {expected_sha256}; the download was removed"
        )
    partial.replace(target)
    return target


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the policy allows (an allowed host may point anywhere)."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        self.policy.check_url(f"source (redirected by {req.full_url})", newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _checksum_ok(path: Path, expected_sha256: str) -> bool:
    if not expected_sha256:
        return True
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == expected_sha256.lower()


def extract(archive: Path, target: Path, policy: AccessPolicy) -> list[dict]:
    """Unpack a zip or tar archive safely, within the policy's caps on its member count and
    unpacked size (read from its directory before anything is written); returns the refused
    members with reasons."""
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, target, policy)
    if tarfile.is_tarfile(archive):
        return _extract_tar(archive, target, policy)
    raise DatasetError(f"{archive.name} is neither a zip nor a tar archive")


def _unsafe_path(name: str) -> bool:
    path = PurePosixPath(name)
    return path.is_absolute() or ".." in path.parts or name.startswith("\\")


def _write_member(target: Path, name: str, data: bytes) -> None:
    destination = target / name
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(data)


def _extract_zip(archive: Path, target: Path, policy: AccessPolicy) -> list[dict]:
    refused = []
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        policy.check_archive(f"the archive {archive.name}", len(members), sum(m.file_size for m in members))
        for info in members:
            mode = info.external_attr >> 16
            if info.is_dir():
                continue
            if _unsafe_path(info.filename):
                refused.append(
                    {"file": info.filename, "reason": "archive member outside the target (zip-slip)"}
                )
            elif stat.S_ISLNK(mode):
                refused.append({"file": info.filename, "reason": "archive member is a link"})
            else:
                _write_member(target, info.filename, zf.read(info))
    return refused


def _extract_tar(archive: Path, target: Path, policy: AccessPolicy) -> list[dict]:
    refused = []
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        policy.check_archive(f"the archive {archive.name}", len(members), sum(m.size for m in members))
        for member in members:
            if member.isdir():
                continue
            if _unsafe_path(member.name):
                refused.append(
                    {"file": member.name, "reason": "archive member outside the target (zip-slip)"}
                )
            elif member.issym() or member.islnk():
                refused.append({"file": member.name, "reason": "archive member is a link"})
            elif not member.isfile():
                refused.append({"file": member.name, "reason": "archive member is a device or special file"})
            else:
                handle = tf.extractfile(member)
                if handle is not None:
                    _write_member(target, member.name, handle.read())
    return refused
