"""The one supervisor of the long-running processes this project starts and leaves running:
the local tritonserver, Airflow's components, each component of the single-node cluster and
dockerd. Each runs detached (its own session and process group, so it outlives the command
that started it), appends its output to a log file, and is found again through a pid file.

A zombie counts as gone everywhere: it answers signal 0, but no signal moves it any more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from core.errors import ProjectError

T = TypeVar("T")


class ProcessFailed(ProjectError, RuntimeError):
    """A supervised process exited, or was not ready in time; the message carries its log's tail."""


def running(pid: int) -> bool:
    """Whether `pid` runs: neither gone nor a zombie (reaped here when it is our own child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def group_members(group: int) -> list[int]:
    """The processes of a process group that still run (zombies do not count)."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(entry.name))
        if stat is not None and int(stat[2]) == group and stat[0] != "Z":
            members.append(int(entry.name))
    return members


def group_running(group: int) -> bool:
    return bool(group_members(group))


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, pgrp, ...); None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def wait_for(
    what: str,
    condition: Callable[[], T | None],
    timeout_s: float,
    *,
    interval_s: float = 0.5,
    failed: Callable[[], str | None] = lambda: None,
    detail: Callable[[], str] | None = None,
    tolerate: tuple[type[Exception], ...] = (),
    error: type[Exception] = ProcessFailed,
) -> T:
    """Poll `condition` until it returns something truthy, and return that. Raise `error` as
    soon as `failed` names a reason to stop (a process that exited), or once `timeout_s` has
    passed ("timed out after N s waiting for <what>", then `detail()`, a log's tail).
    Exceptions of the `tolerate` kinds while polling count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result: T | None = condition()
        except tolerate:
            result = None
        if result:
            return result
        reason = failed()
        if reason is not None:
            raise error(reason)
        if time.monotonic() > deadline:
            message = f"timed out after {timeout_s:.0f} s waiting for {what}"
            raise error(f"{message}:\n{detail()}" if detail else message)
        time.sleep(interval_s)


@dataclass(frozen=True)
class Supervised:
    """One detached process: where its pid and its output go."""

    name: str
    pid_file: Path
    log_file: Path

    def start(self, command: list[str], env: Mapping[str, str] | None = None) -> int:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                start_new_session=True,  # outlive the caller; stopped as one group
            )
        self.pid_file.write_text(str(process.pid))
        return process.pid

    def pid(self) -> int | None:
        """The process, if it still runs."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if running(pid) else None

    def tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def wait_until_ready(self, ready: Callable[[], object], timeout_s: float, error: type[Exception]) -> None:
        """Poll `ready`; raise `error` with the log's tail once the process is gone or time is up."""

        def exited() -> str | None:
            if self.pid() is not None:
                return None
            return f"{self.name} exited; last lines of {self.log_file}:\n{self.tail()}"

        wait_for(
            f"{self.name} to be ready",
            ready,
            timeout_s,
            interval_s=0.2,  # a server ready before its caller knows it may already be asked for work
            failed=exited,
            detail=self.tail,
            error=error,
        )

    def stop(self, grace_s: float, first: signal.Signals = signal.SIGTERM, group: bool = True) -> bool:
        """`first` (to the whole process group, or to the process alone), then SIGKILL to
        whatever is left after `grace_s`. False when nothing was running."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        alive = (lambda: group_running(pid)) if group else (lambda: running(pid))
        send = os.killpg if group else os.kill
        with contextlib.suppress(ProcessLookupError):
            send(pid, first)
        deadline = time.monotonic() + grace_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive():
            with contextlib.suppress(ProcessLookupError):
                send(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace_s
            while alive() and time.monotonic() < deadline:
                time.sleep(0.2)
        return True
