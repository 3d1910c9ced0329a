"""Each measured path in a fresh interpreter, so nothing one path loaded or started shares the
cores with the next (the benchmarks' rule: each path in its own clean process)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def in_clean_process(function: Callable[..., Any], **arguments: Any) -> Any:
    """`function(**arguments)`, run in a fresh interpreter; its JSON result.

    `function` is a module-level function of an importable module (a benchmark run with
    `python -m` counts: its `__main__` is imported again by name)."""
    module = function.__module__
    if module == "__main__":
        spec = sys.modules["__main__"].__spec__
        if spec is None:
            raise ValueError(f"{function.__name__} is in a script: run the benchmark with python -m")
        module = spec.name
    code = (
        "import importlib, json, sys; "
        f"function = getattr(importlib.import_module({module!r}), {function.__name__!r}); "
        "print(json.dumps(function(**json.loads(sys.argv[1])), default=str))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(arguments, default=str)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{function.__name__} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
