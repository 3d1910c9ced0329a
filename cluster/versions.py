"""The pins in cluster/versions.env, read without third-party packages (the preflight runs
before the virtualenv exists)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

VERSIONS_FILE = Path(__file__).with_name("versions.env")


def pinned(name: str) -> str:
    """A version from cluster/versions.env, the one file of pins."""
    for line in VERSIONS_FILE.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == name:
            return value.strip('"')
    raise KeyError(f"{name} is not pinned in cluster/versions.env")


@dataclass(frozen=True)
class DebianPin:
    """A Debian package pinned to an upstream release (`containerd:1.6`), whatever its revision."""

    package: str
    upstream: str

    def admits(self, debian_version: str) -> bool:
        """Whether an installed version (`1.6.20~ds1-1+deb12u3`) is of the pinned upstream release.

        Debian versions read `[epoch:]upstream[-revision]`; the pin must be the upstream part's
        prefix, ending where a component ends (1.6 admits 1.6.20, not 1.60)."""
        return re.match(re.escape(self.upstream) + r"(?![0-9])", upstream_version(debian_version)) is not None


def upstream_version(debian_version: str) -> str:
    """The upstream part of a Debian version: no epoch, no Debian revision."""
    without_epoch = debian_version.split(":", 1)[-1]
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def debian_pins() -> list[DebianPin]:
    pins = []
    for word in pinned("DEBIAN_PACKAGES").split():
        package, _, upstream = word.partition(":")
        pins.append(DebianPin(package, upstream))
    return pins


def version_tuple(version: str) -> tuple[int, ...]:
    """`go1.26.8` or `1.26.8` as (1, 26, 8), for comparing Go releases."""
    return tuple(int(part) for part in re.findall(r"\d+", version.removeprefix("go")))
