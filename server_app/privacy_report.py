"""What a DP run reports: the accountant checked at set-up, ``epsilon`` in every round record of
metrics.jsonl (and so in the experiment tracker); summary.md's section is
:mod:`server_app.privacy_summary`'s."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedra_core.accounting import epsilon, require_accountant
from fedra_core.run_config import ConfigError, RunConfig
from server_app import outputs
from server_app.privacy_summary import released_rounds


def require(cfg: RunConfig) -> None:
    """Raise ConfigError (one line) when the run has DP on and dp-accounting is not installed."""
    if cfg.dp_settings() is None:
        return
    try:
        require_accountant()
    except ImportError as exc:
        raise ConfigError(f"config key 'dp-noise-multiplier' = {cfg.dp_noise_multiplier!r} needs the accountant: {exc}") from None


def epsilon_entry(cfg: RunConfig, run_dir: Path, record: Mapping[str, Any]) -> dict[str, float]:
    """Return ``{"epsilon": e}`` for the round ``record`` about to be appended to ``run_dir``'s
    metrics.jsonl: the epsilon at ``dp-delta`` after every round released so far, this one
    included; empty when DP is off."""
    dp = cfg.dp_settings()
    if dp is None:
        return {}
    earlier = [r for r in outputs.read_metrics(run_dir) if r["round"] < record["round"]]
    return {"epsilon": epsilon(dp.noise_multiplier, released_rounds([*earlier, record]), dp.delta)}
