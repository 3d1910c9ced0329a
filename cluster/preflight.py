"""What this machine must have before the long work starts: `make doctor` runs every check, and
`make test`, `make cluster` and `make demo` run theirs first. Each missing prerequisite is one
line saying how to fix it, printed in the first seconds instead of twenty minutes into a build.

Standard library only: it runs on the Python that creates the virtualenv, before it exists.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cluster.versions import DebianPin, debian_pins, pinned, version_tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
# The first Go whose go command fetches a newer toolchain through the module proxy (GOTOOLCHAIN).
GO_TOOLCHAIN_SWITCHING = "1.21"
# Free space each goal needs: over 2 GiB more than a clean clone's `make test` took here at its
# peak (14.7 GiB above its start, 2026-12-07, `python3 -m benchmarks.disk_peak -- make test`),
# while the cluster built the training image; the Go build of Kubernetes' components, beside
# the virtualenv (3.6 GiB), came second. `make cluster`'s demo builds the same images.
FREE_GIB = {"demo": 10, "cluster": 17, "test": 17}
# The report test renders HTML with Debian's Chromium (`make browser`).
BROWSER = "chromium"


@dataclass(frozen=True)
class Finding:
    """One missing prerequisite and how to fix it."""

    missing: str
    fix: str

    def __str__(self) -> str:
        return f"preflight: {self.missing}: {self.fix}"


def check_python(version: tuple[int, int] = sys.version_info[:2]) -> Iterable[Finding]:
    if version != (3, 11):
        yield Finding(
            f"Python {version[0]}.{version[1]} runs this, the project needs 3.11",
            "install python3.11 (Debian 12: apt-get install python3.11 python3.11-venv) or set PYTHON=...",
        )
        return
    try:
        import ensurepip  # noqa: F401  (what `python -m venv` installs pip with)
    except ImportError:
        yield Finding("Python's venv cannot install pip", "apt-get install python3.11-venv")
    try:
        ctypes.CDLL(f"libpython{version[0]}.{version[1]}.so.1.0")
    except OSError:
        yield Finding(
            "libpython3.11.so.1.0 (Triton's python backend stub links it)",
            "apt-get install libpython3.11 (or use a Python built with --enable-shared)",
        )


def check_root(uid: int = os.geteuid()) -> Iterable[Finding]:
    if uid != 0:
        yield Finding(
            "root (the cluster mounts volumes, sets iptables rules and installs Debian packages)",
            "run it as root: sudo make ...",
        )


def go_toolchain(installed: str | None, needed: str = pinned("GO_VERSION")) -> str:
    """The GOTOOLCHAIN cluster/build.sh sets: `local` when the machine's Go is new enough, else
    the pinned release, which the go command fetches through the module proxy."""
    if installed is None:
        raise LookupError(f"no go on PATH: install Go {needed}, or any Go from {GO_TOOLCHAIN_SWITCHING} on")
    if version_tuple(installed) >= version_tuple(needed):
        return "local"
    if version_tuple(installed) < version_tuple(GO_TOOLCHAIN_SWITCHING):
        raise LookupError(
            f"Go {installed.removeprefix('go')} cannot fetch Go {needed} (toolchain switching came in "
            f"{GO_TOOLCHAIN_SWITCHING}): install Go {needed} (Debian 12: golang-1.23-go from "
            "bookworm-backports will fetch it)"
        )
    return f"go{needed}"


def installed_go() -> str | None:
    if shutil.which("go") is None:
        return None
    result = subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, env={**os.environ, "GOTOOLCHAIN": "local"}
    )
    return result.stdout.strip() or None


def check_go() -> Iterable[Finding]:
    try:
        go_toolchain(installed_go())
    except LookupError as problem:
        yield Finding("Go for the cluster's binaries (cluster/build.sh)", str(problem))


def check_cgroups(root: Path = Path("/sys/fs/cgroup")) -> Iterable[Finding]:
    """The kubelet and containerd limit pods through the cpu and memory controllers (v1 or v2)."""
    unified = root / "cgroup.controllers"
    if unified.exists():
        controllers = set(unified.read_text().split())
    else:  # v1: one hierarchy a controller (cpu, memory, ...)
        controllers = {entry.name for entry in root.iterdir() if entry.is_dir()} if root.is_dir() else set()
    absent = sorted({"cpu", "memory"} - controllers)
    if absent:
        yield Finding(
            f"cgroup controllers {', '.join(absent)} under {root}",
            "mount cgroups (v2: mount -t cgroup2 none /sys/fs/cgroup; or boot with them enabled)",
        )


def check_disk(goal: str, where: Path = REPO_ROOT) -> Iterable[Finding]:
    need = FREE_GIB.get(goal, max(FREE_GIB.values()))
    free = shutil.disk_usage(where).free / 2**30
    if free < need:
        yield Finding(f"{need} GiB free under {where} ({free:.0f} GiB now)", "free some disk space")


def installed_version(package: str) -> str | None:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package], capture_output=True, text=True
    )
    status, _, version = result.stdout.partition(" ")
    return version if result.returncode == 0 and status == "installed" else None


def packages_to_install() -> list[str]:
    if shutil.which("dpkg-query") is None:
        return ["(every package: this machine has no dpkg)"]
    wanted = [pin.package for pin in debian_pins()]
    if shutil.which(BROWSER) is None:
        wanted.append(BROWSER)
    return [package for package in wanted if installed_version(package) is None]


def check_apt_sources(
    missing: list[str], release: Path = Path("/etc/os-release"), sources: Path = Path("/etc/apt")
) -> Iterable[Finding]:
    """Only when something is to be installed: Debian 12's archive, whose upstream releases the pins name."""
    if not missing:
        return
    facts = dict(line.split("=", 1) for line in _lines(release) if "=" in line)
    if facts.get("VERSION_CODENAME", "").strip('"') != "bookworm" or shutil.which("apt-get") is None:
        yield Finding(
            f"Debian 12 (bookworm) with apt, to install {' '.join(missing)}",
            "run on Debian 12, or install them yourself at the releases cluster/versions.env pins",
        )
        return
    folder = sources / "sources.list.d"
    listed = [sources / "sources.list", *sorted(folder.glob("*.list")), *sorted(folder.glob("*.sources"))]
    entries = [line for path in listed for line in _lines(path) if not line.lstrip().startswith("#")]
    if not any("bookworm" in line for line in entries):
        yield Finding(
            f"an apt source for bookworm, to install {' '.join(missing)}",
            "add 'deb http://deb.debian.org/debian bookworm main' to /etc/apt/sources.list",
        )


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


CHECKS: dict[str, Callable[[str], Iterable[Finding]]] = {
    "python": lambda goal: check_python(),
    "root": lambda goal: check_root(),
    "go": lambda goal: check_go(),
    "cgroups": lambda goal: check_cgroups(),
    "disk": check_disk,
    "apt": lambda goal: check_apt_sources(packages_to_install()),
}
GOALS = {
    "demo": ("python", "go", "disk"),  # Go: the Prometheus beside the local Triton
    "cluster": ("python", "root", "go", "cgroups", "disk", "apt"),
    "test": ("python", "root", "go", "cgroups", "disk", "apt"),
}


def preflight(goal: str) -> list[Finding]:
    names = GOALS.get(goal, tuple(CHECKS))
    return [finding for name in names for finding in CHECKS[name](goal)]


def ensure_packages(pins: list[DebianPin], as_root: bool = os.geteuid() == 0) -> list[str]:
    """Install the pinned Debian packages by name where missing, then hold each to its pin.
    Returns `package version` lines, the exact revisions installed, for the log."""
    absent = [pin.package for pin in pins if installed_version(pin.package) is None]
    if absent:
        if not as_root:
            raise LookupError(f"the cluster needs {' '.join(absent)}: sudo make cluster")
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *absent], check=True)
    lines, outside = [], []
    for pin in pins:
        version = installed_version(pin.package)
        if version is None or not pin.admits(version):
            outside.append(f"{pin.package} {version or 'not installed'} is not the pinned {pin.upstream}")
        else:
            lines.append(f"{pin.package} {version}")
    if outside:
        raise LookupError(
            "; ".join(outside) + " (cluster/versions.env): install the pinned release, or test the new one "
            "and move the pin"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m cluster.preflight", description=__doc__)
    parser.add_argument(
        "goal",
        choices=["doctor", *GOALS, "packages", "toolchain"],
        help="doctor: every check; test/cluster/demo: what that make target needs; packages: install "
        "and check the pinned Debian packages; toolchain: the GOTOOLCHAIN cluster/build.sh sets",
    )
    goal = parser.parse_args(argv).goal
    try:
        if goal == "toolchain":
            print(go_toolchain(installed_go()))
            return 0
        if goal == "packages":
            print("\n".join(f"debian: {line}" for line in ensure_packages(debian_pins())))
            return 0
    except LookupError as problem:
        print(f"preflight: {problem}", file=sys.stderr)
        return 1
    findings = preflight(goal)
    for finding in findings:
        print(finding, file=sys.stderr)
    if not findings:
        print(f"preflight ({goal}): this machine has what it needs")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
