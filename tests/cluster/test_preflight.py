"""The preflight `make doctor` runs and the pins it reads: every check reports one line with its
fix, Debian packages are pinned to upstream releases that survive Debian's point releases, and
the Go the build needs is stated once and fetched when the machine's is older."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import preflight
from cluster.preflight import Finding, check_apt_sources, check_cgroups, go_toolchain
from cluster.versions import DebianPin, pinned, version_tuple
from harness.data import REPO_ROOT

# What a pin names: a package, then an upstream release of digits and dots. A Debian revision
# (`-1+deb12u3`), an epoch or an exact `=version` would stop installing at the next point release.
UPSTREAM_PIN = re.compile(r"[a-z0-9][a-z0-9.+-]*:\d+(\.\d+)*")


def _names_a_revision(word: str) -> bool:
    return UPSTREAM_PIN.fullmatch(word) is None


def test_no_debian_pin_names_a_revision() -> None:
    words = pinned("DEBIAN_PACKAGES").split()
    assert words, "the cluster's Debian packages are pinned in cluster/versions.env"
    assert [word for word in words if _names_a_revision(word)] == []
    # The pins this replaced: each names a Debian revision, and the check sees it.
    assert _names_a_revision("containerd=1.6.20~ds1-1+deb12u3")
    assert _names_a_revision("docker.io:20.10.24+dfsg1-1+deb12u1+b6")
    assert _names_a_revision("conntrack:1:1.4.7")


@pytest.mark.parametrize(
    ("upstream", "installed", "admitted"),
    [
        ("1.6", "1.6.20~ds1-1+deb12u3", True),
        ("1.6", "1.6.24~ds1-1+deb12u1", True),  # a later point release keeps the pin
        ("1.4", "1:1.4.7-1+b2", True),  # an epoch
        ("20.10", "20.10.24+dfsg1-1+deb12u1+b6", True),
        ("1.0", "1.0.128+nmu2+deb12u2", True),  # a native package has no revision
        ("1.6", "1.7.24~ds1-6", False),
        ("1.1", "1.10.0-1", False),  # 1.1 is not 1.10
        ("1.8", "1:1.8.9-2", True),
    ],
)
def test_a_pin_admits_its_upstream_release_whatever_the_revision(
    upstream: str, installed: str, admitted: bool
) -> None:
    assert DebianPin("p", upstream).admits(installed) is admitted


def test_installed_packages_outside_their_pin_are_refused_by_name() -> None:
    """The real dpkg database: dpkg itself is installed on any Debian machine."""
    version = preflight.installed_version("dpkg")
    assert version is not None
    release = ".".join(version.split(".")[:2])
    assert preflight.ensure_packages([DebianPin("dpkg", release)]) == [f"dpkg {version}"]
    with pytest.raises(LookupError, match=rf"dpkg {re.escape(version)} is not the pinned 0\.1"):
        preflight.ensure_packages([DebianPin("dpkg", "0.1")])


def test_the_go_version_is_stated_once_and_is_what_the_build_modules_ask() -> None:
    asked = {
        path.parent.name: line.split()[1]
        for path in (REPO_ROOT / "cluster" / "build").glob("*/go.mod")
        for line in path.read_text().splitlines()
        if line.startswith("go ")
    }
    assert asked, "each build module states its go line"
    assert max(asked.values(), key=version_tuple) == pinned("GO_VERSION"), asked


@pytest.mark.parametrize(
    ("installed", "toolchain"),
    [("go1.26.8", "local"), ("go1.27.3", "local"), ("go1.23.4", "go1.26.8"), ("go1.21.0", "go1.26.8")],
)
def test_an_older_go_fetches_the_pinned_one(installed: str, toolchain: str) -> None:
    assert go_toolchain(installed, needed="1.26.8") == toolchain


@pytest.mark.parametrize(
    ("installed", "message"),
    [(None, "no go on PATH: install Go 1.26.8"), ("go1.19.8", "Go 1.19.8 cannot fetch Go 1.26.8")],
)
def test_no_go_or_one_too_old_to_fetch_is_refused(installed: str | None, message: str) -> None:
    with pytest.raises(LookupError, match=message):
        go_toolchain(installed, needed="1.26.8")


def test_cgroup_controllers_are_found_in_either_hierarchy(tmp_path: Path) -> None:
    unified = tmp_path / "v2"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert list(check_cgroups(unified)) == []
    (unified / "cgroup.controllers").write_text("cpuset io pids\n")
    assert [f.missing for f in check_cgroups(unified)] == [f"cgroup controllers cpu, memory under {unified}"]
    split = tmp_path / "v1"
    for controller in ("cpu", "memory", "pids"):
        (split / controller).mkdir(parents=True)
    assert list(check_cgroups(split)) == []
    assert len(list(check_cgroups(tmp_path / "absent"))) == 1


def test_apt_sources_are_checked_only_when_something_is_missing(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n')
    (tmp_path / "sources.list.d").mkdir()
    assert list(check_apt_sources([], release, tmp_path)) == []
    [finding] = check_apt_sources(["containerd"], release, tmp_path)
    assert finding.missing == "an apt source for bookworm, to install containerd"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert list(check_apt_sources(["containerd"], release, tmp_path)) == []
    release.write_text("VERSION_CODENAME=trixie\n")
    [finding] = check_apt_sources(["containerd"], release, tmp_path)
    assert finding.missing.startswith("Debian 12 (bookworm) with apt")


def test_python_root_and_disk_each_name_their_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    [python] = preflight.check_python((3, 12))
    assert "3.11" in python.fix
    assert list(preflight.check_python((3, 11))) == []
    [root] = preflight.check_root(1000)
    assert root.fix == "run it as root: sudo make ..."
    assert list(preflight.check_root(0)) == []
    monkeypatch.setitem(preflight.FREE_GIB, "test", 10**6)
    [disk] = preflight.check_disk("test")
    assert disk.missing.startswith("1000000 GiB free under")


def test_doctor_prints_one_line_per_missing_item_within_seconds(tmp_path: Path) -> None:
    """The CLI as `make doctor` runs it, on a PATH without go: a line naming what to install."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dpkg-query", "apt-get", preflight.BROWSER):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True)
        if found.stdout.strip():
            (tools / tool).symlink_to(found.stdout.strip())
    result = subprocess.run(
        [sys.executable, "-m", "cluster.preflight", "doctor"],
        cwd=REPO_ROOT,
        env={**os.environ, "PATH": str(tools)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines, "the missing Go is reported"
    assert all(line.startswith("preflight: ") for line in lines), lines
    expected = Finding(
        "Go for the cluster's binaries (cluster/build.sh)",
        f"no go on PATH: install Go {pinned('GO_VERSION')}, or any Go from 1.21 on",
    )
    assert str(expected) in lines
