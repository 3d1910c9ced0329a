"""A Triton python-backend model that answers like the genuine one beside it (genuine.py)
but with the fault fault.json names:

* `failing`: once it has served for FAILING_AFTER_S (past any smoke test), one execution in
  three fails;
* `slow`: every execution takes SLOW_S longer.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

FAILING_AFTER_S = 30.0
SLOW_S = 0.4


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        spec = importlib.util.spec_from_file_location("genuine", version_dir / "genuine.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.genuine = module.TritonPythonModel()
        self.genuine.initialize(args)
        self.fault = json.loads((version_dir / "fault.json").read_text())["fault"]
        self.loaded_at = time.monotonic()
        self.executions = 0

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.fault == "slow":
            time.sleep(SLOW_S)
        if self.fault == "failing" and time.monotonic() - self.loaded_at >= FAILING_AFTER_S:
            self.executions += 1
            if self.executions % 3 == 0:
                # Raised, so Triton counts each request of the batch as failed (an error response
                # would count as a success).
                raise pb_utils.TritonModelException("a failure the test injected")
        return list(self.genuine.execute(requests))
