"""How every command line reports a mistake: a `ProjectError`, or settings the typed models
refuse, is printed as `<prog>: error: <message>` on stderr and the command exits 2, as
argparse does for a bad flag. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Protocol

import pydantic

from core.errors import ProjectError

USER_ERROR_EXIT = 2


class Main(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


def refused_settings(error: pydantic.ValidationError) -> str:
    """A validation error on one line: `field: why` for each refused field."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())


def reports_errors(prog: str) -> Callable[[Main], Main]:
    """Wrap a command's `main(argv)`: project errors and refused settings become one line."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except ProjectError as error:
                message = str(error)
            except pydantic.ValidationError as error:  # settings the typed models refuse
                message = refused_settings(error)
            print(f"{prog}: error: {message}", file=sys.stderr)
            return USER_ERROR_EXIT

        return run

    return wrap
