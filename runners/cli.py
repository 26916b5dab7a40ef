"""What the runners' command lines share: reading ``--run-config`` strictly, and turning the errors a
user can fix (a bad config, an unusable checkpoint, a run that cannot go on) into one line."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Any

from fedra_core.run_config import ConfigError


def parse_run_config(text: str) -> dict[str, Any]:
    """Parse ``--run-config "k=v k2='s'"`` as ``flwr run`` does; raise ConfigError naming the first
    malformed entry (flwr's own parser silently drops ``x`` and ``x=``)."""
    from click import ClickException
    from flwr.common.config import parse_config_args

    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"--run-config {text!r}: {exc} (expected key=value pairs separated by spaces)") from None
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--run-config entry {token!r} is not key=value (strings in quotes: method='depthfl')")
    try:
        parsed = parse_config_args([text]) if tokens else {}
    except ClickException as exc:
        raise ConfigError(f"--run-config {text!r}: {exc.message.split('. ')[0]} (e.g. \"lr=0.1 method='depthfl'\")") from None
    missing = [t.partition("=")[0] for t in tokens if t.partition("=")[0] not in parsed]
    if missing:
        raise ConfigError(f"--run-config entry for {missing[0]!r} could not be read (strings in quotes: method='depthfl')")
    return parsed


def one_line_errors(main: Callable[[], int]) -> int:
    """Run ``main``; return its exit code, or print ``error: <one line>`` and return 2 for a bad
    config or checkpoint, 1 for a run that could not go on (no traceback for what the user can fix)."""
    from server_app.app import RunError
    from server_app.checkpoint import CheckpointError

    try:
        return main()
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
