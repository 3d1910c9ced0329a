"""The one supervisor of detached processes: start, find again, tail, wait, stop."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from core.processes import ProcessFailed, Supervised, group_running, running, wait_for


@pytest.fixture
def supervised(tmp_path: Path) -> Supervised:
    return Supervised("worker", tmp_path / "pids" / "worker.pid", tmp_path / "logs" / "worker.log")


def test_a_started_process_is_found_again_and_stopped(supervised: Supervised) -> None:
    pid = supervised.start(["sh", "-c", "echo started; exec sleep 60"])
    assert Supervised(supervised.name, supervised.pid_file, supervised.log_file).pid() == pid
    wait_for("its first line", lambda: "started" in supervised.tail(), 10, interval_s=0.05)
    assert supervised.stop(grace_s=10) is True
    assert not group_running(pid)
    assert supervised.pid() is None
    assert not supervised.pid_file.exists()
    assert supervised.stop(grace_s=10) is False, "nothing left to stop"


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(supervised: Supervised) -> None:
    pid = supervised.start(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
    wait_for("the trap to be set", lambda: "ready" in supervised.tail(), 10, interval_s=0.05)
    assert supervised.stop(grace_s=0.5) is True
    assert not group_running(pid), "SIGKILL took the whole group, the shell's sleep too"


def test_an_exited_child_counts_as_gone_not_as_a_zombie() -> None:
    child = subprocess.Popen(["true"])
    wait_for("the child to exit", lambda: not running(child.pid), 10, interval_s=0.05)
    assert not running(child.pid)  # a zombie by now, if the first look did not reap it already
    assert not Path(f"/proc/{child.pid}").exists(), "running() reaped it"


def test_waiting_stops_at_once_when_the_process_exits(supervised: Supervised) -> None:
    supervised.start(["sh", "-c", "echo cannot bind its port; exit 3"])
    with pytest.raises(ProcessFailed, match=r"worker exited; last lines of .*\ncannot bind its port"):
        supervised.wait_until_ready(lambda: False, timeout_s=60, error=ProcessFailed)


def test_waiting_gives_up_at_the_deadline_with_the_log(supervised: Supervised) -> None:
    supervised.start(["sh", "-c", "echo still loading; exec sleep 60"])
    try:
        with pytest.raises(ProcessFailed, match=r"timed out after 1 s waiting for worker to be ready:\n"):
            supervised.wait_until_ready(lambda: False, timeout_s=1, error=ProcessFailed)
    finally:
        supervised.stop(grace_s=10)


def test_errors_of_the_tolerated_kinds_count_as_not_yet() -> None:
    answers = iter([ConnectionError("not up"), None, "up"])

    def check() -> str | None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for("the server", check, 10, interval_s=0.01, tolerate=(ConnectionError,)) == "up"
    settings: dict[str, str] = {}
    with pytest.raises(KeyError):
        wait_for("a bug", lambda: settings["missing"], 10, tolerate=(ConnectionError,))
