"""summary.md's differential-privacy section: the guarantee a DP run ends with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def released_rounds(records: Sequence[Mapping[str, Any]]) -> int:
    """Return how many training rounds released a noisy aggregate (not skipped)."""
    return sum(1 for r in records if r.get("round", 0) > 0 and not r.get("skipped", True))


def privacy_lines(config: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return summary.md's differential-privacy section (none when DP was off)."""
    z = float(config.get("dp-noise-multiplier", 0.0) or 0.0)
    if not z:
        return []
    last = records[-1].get("epsilon") if records else None
    shown = "n/a" if last is None else f"{last:.4g}"
    return [
        "## Differential privacy",
        "",
        f"(epsilon, delta) = ({shown}, {config['dp-delta']:g}) per node after {released_rounds(records)} released rounds: "
        f"noise multiplier {z:g}, clip norm {config['dp-clip-norm']:g} of each node's whole update, Gaussian noise "
        "per block on the holders' sum (dp-accounting RDP, node-level adjacency, no sampling amplification). "
        "Central DP: the server adds the noise and sees the clipped updates; the evaluation metrics and "
        "train losses in this folder are not noised.",
        "",
    ]
