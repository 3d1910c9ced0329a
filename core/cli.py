"""How every command line reports a mistake: a `ProjectError`, or settings the typed models
refuse, is printed as `<prog>: error: <message>` on stderr and the command exits 2, as
argparse does for a bad flag. Anything else is a bug and keeps its traceback.

SIGTERM ends every command at once, with `finally` blocks run: in a pod the command is
PID 1, and the kernel drops signals PID 1 has no handler for, so a deleted or preempted
pod would run on through its whole grace period and might even finish and report success.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Protocol

import pydantic

from core.errors import ProjectError

USER_ERROR_EXIT = 2
TERMINATED_EXIT = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM ended


class Main(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


def refused_settings(error: pydantic.ValidationError) -> str:
    """A validation error on one line: `field: why` for each refused field.

    A default computed from a refused field is left out: its error only repeats that one."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
        for e in error.errors()
        if e["type"] != "default_factory_not_called"
    )


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(TERMINATED_EXIT)


@contextlib.contextmanager
def _exits_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit while the command runs; the previous handler comes back after."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def reports_errors(prog: str) -> Callable[[Main], Main]:
    """Wrap a command's `main(argv)`: project errors and refused settings become one line,
    and SIGTERM exits with TERMINATED_EXIT."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                with _exits_on_sigterm():
                    return main(argv)
            except ProjectError as error:
                message = str(error)
            except pydantic.ValidationError as error:  # settings the typed models refuse
                message = refused_settings(error)
            print(f"{prog}: error: {message}", file=sys.stderr)
            return USER_ERROR_EXIT

        return run

    return wrap
