"""A progress line for long batches: images, img/s and failures.

On a terminal it redraws one line; elsewhere (an Airflow task log) it writes a
plain line every `log_interval_s`, so logs stay readable.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Progress:
    def __init__(
        self, *, enabled: bool = True, stream: TextIO | None = None, log_interval_s: float = 10.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval_s = 0.2 if self.tty else log_interval_s
        self.started = self.last_shown = time.monotonic()
        self.done = self.failed = self.skipped = 0
        self._lock = threading.Lock()

    def advance(self, succeeded: int, failed: int) -> None:
        with self._lock:
            self.done += succeeded + failed
            self.failed += failed
            if time.monotonic() - self.last_shown >= self.interval_s:
                self._show()

    def skip(self, images: int) -> None:
        """Images already predicted by an earlier run (counted apart from the rate)."""
        with self._lock:
            self.skipped += images

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        resumed = f" | {self.skipped} already done" if self.skipped else ""
        return f"{self.done} images | {self.done / elapsed:.1f} img/s | {self.failed} failed{resumed}"

    def close(self) -> None:
        with self._lock:
            self._show()
            if self.enabled and self.tty:
                self.stream.write("\n")

    def _show(self) -> None:
        self.last_shown = time.monotonic()
        if self.enabled:
            self.stream.write(("\r" if self.tty else "") + self.line() + ("" if self.tty else "\n"))
            self.stream.flush()
