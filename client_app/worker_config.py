"""The node-config keys of the warm node worker (client_app/worker.py) and their checks.

Standard library only: the thin ClientApp reads them before deciding whether to import anything heavy.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODE = "node-worker"            # auto | on | off
IDLE = "node-worker-idle"       # seconds without a message after which the worker exits
TIMEOUT = "node-worker-timeout"  # seconds one message may take in the worker before it counts as hung
KEYS = (MODE, IDLE, TIMEOUT)
MODES = ("auto", "on", "off")
DEFAULT_IDLE = 900.0
DEFAULT_TIMEOUT = 3600.0


class WorkerConfigError(ValueError):
    """A bad node-worker node-config value (the message names it and what is allowed)."""


@dataclass(frozen=True)
class WorkerSettings:
    """Whether messages go to a warm worker and its limits.

    ``mode`` auto (the default) means on inside Flower's per-message ``flwr-clientapp`` process and
    off elsewhere (the simulation engine and the in-process runner keep the ClientApp loaded
    already). ``idle`` and ``timeout`` are seconds."""

    mode: str = "auto"
    idle: float = DEFAULT_IDLE
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> "WorkerSettings":
        """Read and check the node-worker keys of ``node_config``; WorkerConfigError names a bad value."""
        mode = str(node_config.get(MODE, "auto"))
        if mode not in MODES:
            raise WorkerConfigError(f"node-config {MODE!r} = {mode!r}: allowed {list(MODES)}")
        return cls(mode, _seconds(node_config, IDLE, DEFAULT_IDLE), _seconds(node_config, TIMEOUT, DEFAULT_TIMEOUT))

    @property
    def enabled(self) -> bool:
        """True when this process should forward its message to the node's worker."""
        if self.mode == "auto":
            return per_message_process()
        return self.mode == "on"


def per_message_process() -> bool:
    """True inside Flower's ``flwr-clientapp``, the process a SuperNode starts for one message."""
    return Path(sys.argv[0]).name == "flwr-clientapp"


def _seconds(node_config: Mapping[str, object], key: str, default: float) -> float:
    value = node_config.get(key, default)
    try:
        out = float(str(value))
    except ValueError:
        out = -1.0
    if not out > 0 or out != out or out == float("inf"):
        raise WorkerConfigError(f"node-config {key!r} = {value!r}: must be a number of seconds > 0")
    return out
