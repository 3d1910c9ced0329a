"""What a run's conf may name: the one place where paths, buckets and URLs from a trigger are
checked before any I/O (docs/security.md has the threat model).

Whoever may trigger a run names folders, buckets and URLs the worker then reads and writes.
The deployment (`Environment`) says which local roots those may lie under, which networks a
download may reach beyond the public internet, and how large an archive may unpack.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ProjectError
from core.settings import Environment, RunConfig

GCS_SCHEME = "gs://"
URL_SCHEMES = ("http://", "https://")
# GCS bucket names: 3-63 characters of lower-case letters, digits, dashes, underscores and
# dots, beginning and ending with a letter or digit.
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]


class PolicyRefused(ProjectError, ValueError):
    """A conf named something the deployment does not allow; the message names the field,
    the value and the rule."""


@dataclass(frozen=True)
class AccessPolicy:
    allowed_roots: Sequence[Path] = ()
    allowed_networks: Sequence[Network] = ()
    max_archive_bytes: int = 8 << 30
    max_archive_members: int = 50_000
    resolve: Resolver = field(default=lambda host: _resolve(host), compare=False)

    def check_location(self, name: str, value: str) -> str:
        """A folder or gs:// prefix a run reads or writes; returns it as given."""
        if value.startswith(GCS_SCHEME):
            return check_gcs_uri(name, value)
        if "://" in value or value.startswith("file:"):
            raise PolicyRefused(f"{name}={value!r}: only a local folder or a gs:// prefix, no other scheme")
        self.check_path(name, value)
        return value

    def check_source(self, name: str, value: str) -> str:
        """Where staging reads from: also an http(s) archive."""
        if value.startswith(URL_SCHEMES):
            self.check_url(name, value)
            return value
        return self.check_location(name, value)

    def check_path(self, name: str, value: str) -> Path:
        """A local path, resolved (`..` and links followed), under one of the allowed roots."""
        resolved = Path(value).expanduser().resolve()
        roots = [Path(root).expanduser().resolve() for root in self.allowed_roots]
        if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(map(str, roots)) or "none (set DOGS_CATS_ALLOWED_ROOTS)"
            raise PolicyRefused(f"{name}={value!r}: {resolved} is outside the allowed roots ({allowed})")
        return resolved

    def check_url(self, name: str, url: str) -> None:
        """An http(s) URL whose host resolves only to addresses the deployment allows."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https"):
            raise PolicyRefused(f"{name}={url!r}: only http and https URLs are fetched")
        if not parsed.hostname:
            raise PolicyRefused(f"{name}={url!r}: the URL names no host")
        try:
            addresses = self.resolve(parsed.hostname)
        except OSError as exc:
            raise PolicyRefused(f"{name}={url!r}: {parsed.hostname} does not resolve ({exc})") from exc
        for address in addresses:
            if reason := self.address_refused(ipaddress.ip_address(address)):
                where = address if address == parsed.hostname else f"{parsed.hostname} is {address},"
                raise PolicyRefused(f"{name}={url!r}: {where} {reason}")

    def address_refused(self, address: Address) -> str | None:
        """Why a download may not reach `address`, or None. Loopback, link-local (the cloud
        metadata server), private, shared, unspecified, multicast and reserved addresses are
        refused unless an allowed network holds them."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed_networks):
            return None
        for kind, flagged in (
            ("a loopback address", address.is_loopback),
            ("a link-local address (cloud metadata servers live there)", address.is_link_local),
            ("an unspecified address", address.is_unspecified),
            ("a multicast address", address.is_multicast),
            ("a private address", address.is_private),
            ("a reserved address", address.is_reserved or not address.is_global),
        ):
            if flagged:
                return f"{kind}, which no allowed network holds (DOGS_CATS_ALLOWED_NETWORKS)"
        return None

    def check_archive(self, name: str, members: int, unpacked_bytes: int) -> None:
        """An archive's directory, read before anything is written."""
        if members > self.max_archive_members:
            raise PolicyRefused(
                f"{name}: {members} members, over the {self.max_archive_members} allowed "
                "(DOGS_CATS_MAX_ARCHIVE_MEMBERS)"
            )
        if unpacked_bytes > self.max_archive_bytes:
            raise PolicyRefused(
                f"{name}: {unpacked_bytes} bytes unpacked, over the {self.max_archive_bytes} allowed "
                "(DOGS_CATS_MAX_ARCHIVE_BYTES)"
            )


def check_gcs_uri(name: str, value: str) -> str:
    """A gs://bucket[/prefix] whose bucket is a valid GCS name and whose prefix stays a prefix."""
    bucket, _, prefix = value.removeprefix(GCS_SCHEME).partition("/")
    if not BUCKET_NAME.fullmatch(bucket) or ".." in bucket or re.fullmatch(r"[\d.]+", bucket):
        raise PolicyRefused(f"{name}={value!r}: {bucket!r} is not a GCS bucket name")
    parts = prefix.removesuffix("/").split("/") if prefix else []
    if any(part in ("", ".", "..") for part in parts):
        raise PolicyRefused(f"{name}={value!r}: the object prefix may hold no '.', '..' or empty part")
    if any(ord(character) < 32 or character in "#?*[]" for character in prefix):
        raise PolicyRefused(f"{name}={value!r}: the object prefix holds a control or wildcard character")
    return value


def access_policy(environment: Environment) -> AccessPolicy:
    return AccessPolicy(
        allowed_roots=tuple(environment.allowed_roots),
        allowed_networks=tuple(ipaddress.ip_network(str(net)) for net in environment.allowed_networks),
        max_archive_bytes=environment.max_archive_bytes,
        max_archive_members=environment.max_archive_members,
    )


def check_run(config: RunConfig, policy: AccessPolicy) -> None:
    """Every place a dogs_cats conf names, checked before the run reads or writes anything."""
    policy.check_location("data_bucket", config.data_bucket)
    policy.check_source("source", config.source)
    if config.inference_input:
        policy.check_location("inference_input", config.inference_input)


def _resolve(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
