"""How much disk a command takes at its peak: the file system's used space, sampled while the
command runs, above what was used when it started. cluster/preflight.py's FREE_GIB is sized
from it.

    python3 -m benchmarks.disk_peak --path . -- make test

Standard library only, so it can watch `make test` from a clean clone before `.venv` exists.
Whatever else writes to the same file system counts too: measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path


def used_gib(path: Path) -> float:
    return shutil.disk_usage(path).used / 2**30


def watch(command: list[str], path: Path, every_s: float) -> int:
    """Run `command`, print the peak and final use above the start; return its exit status."""
    start = used_gib(path)
    began = time.monotonic()
    peak, peak_at = 0.0, 0.0
    process = subprocess.Popen(command)
    while process.poll() is None:
        above = used_gib(path) - start
        if above > peak:
            peak, peak_at = above, time.monotonic() - began
        time.sleep(every_s)
    minutes, seconds = divmod(int(peak_at), 60)
    took = time.monotonic() - began
    print(
        f"disk_peak: {peak:.1f} GiB above the start at {minutes}:{seconds:02d}, "
        f"{used_gib(path) - start:.1f} GiB at exit ({took:.0f} s, exit {process.returncode})"
    )
    return process.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", type=Path, default=Path("."), help="a folder on the file system to watch")
    parser.add_argument("--every-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("name the command to watch after --")
    return watch(command, options.path, options.every_s)


if __name__ == "__main__":
    sys.exit(main())
