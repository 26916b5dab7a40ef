"""FedRA: every round each client trains a fresh random subset of blocks, as many as it can hold."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from fedra_core.allocation import last_block_allocation, random_allocation
from fedra_core.methods.base import ALLOCATIONS, Method
from fedra_core.methods.registry import register_method
from fedra_core.state import keys_for_blocks


@register_method
class FedRA(Method):
    """Random blocks per client and round, per-block mean; options: the ``allocation`` policy and
    full-depth head calibration (``head-calibration-steps``)."""

    name = "fedra"
    summary = "random blocks per client and round, each block averaged over the clients that held it (the paper)"

    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        policy = self.settings.allocation
        if policy == "last":
            return last_block_allocation(capacities, num_layers, rng)
        if policy in ("random", "cover"):
            return random_allocation(capacities, num_layers, rng, cover=policy == "cover")
        raise ValueError(f"allocation {policy!r}: allowed {list(ALLOCATIONS)}")

    def context_keys(self, keys: Iterable[str], blocks: Sequence[int]) -> list[str]:
        """With head calibration: every other block's global state (the client runs the full depth)."""
        if not self.settings.head_calibration_steps:
            return []
        keys = list(keys)
        own = set(keys_for_blocks(keys, blocks))
        return [k for k in keys if k not in own]
