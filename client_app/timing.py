"""Where a node's time goes: process start-up and imports (once per process), then per message."""

from __future__ import annotations

import os
import time

from fedra_core import wire


def process_start() -> float:
    """Return the wall-clock time (``time.time()``) at which this process started (Linux /proc; 10 ms)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time after boot, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


class Stopwatch:
    """Collects named durations (seconds) of one message's phases as ``t-<phase>`` metrics."""

    def __init__(self, startup: dict[str, float] | None = None) -> None:
        self.times: dict[str, float] = {wire.TIME_PREFIX + k: v for k, v in (startup or {}).items()}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Record the time since the previous lap (or creation) as phase ``phase``."""
        now = time.perf_counter()
        key = wire.TIME_PREFIX + phase
        self.times[key] = self.times.get(key, 0.0) + now - self._last
        self._last = now

    def metrics(self) -> dict[str, float]:
        """Return the phases and ``t-end``, the wall-clock time the reply was made (for the transfer time)."""
        return {**self.times, wire.TIME_END: time.time()}
