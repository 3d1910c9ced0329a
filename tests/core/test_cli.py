"""A command ended by SIGTERM stops at once, even as PID 1 (what a deleted pod's command is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import TERMINATED_EXIT
from harness.data import REPO_ROOT
from pipeline.stack import wait_for

# A command that would sleep a minute, then report success.
COMMAND = """
import sys, time
from core.cli import reports_errors

@reports_errors("prog")
def main(argv=None):
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        print("cleaned up", flush=True)
    return 0

sys.exit(main())
"""


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _pid_in_its_namespace(pid: int) -> int:
    (line,) = [
        line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("NSpid:")
    ]
    return int(line.split()[-1])


@pytest.mark.faults
def test_sigterm_ends_a_command_running_as_pid_1() -> None:
    """In a new PID namespace the command is PID 1: without a handler the kernel would drop
    the SIGTERM and the command would sleep on."""
    namespace = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", COMMAND],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert namespace.stdout is not None
        assert namespace.stdout.readline() == "ready\n"
        (command,) = wait_for("the command as the namespace's init", lambda: _children(namespace.pid), 10)
        assert _pid_in_its_namespace(command) == 1
        subprocess.run(["kill", "-TERM", str(command)], check=True)
        remaining, _ = namespace.communicate(timeout=30)
    finally:
        namespace.kill()
    assert remaining == "cleaned up\n"
    assert namespace.returncode == TERMINATED_EXIT
