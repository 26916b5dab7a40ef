"""FedRA: every round each client trains a fresh random subset of blocks, as many as it can hold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedra_core.allocation import random_allocation
from fedra_core.methods.base import Method
from fedra_core.methods.registry import register_method


@register_method
class FedRA(Method):
    """Random blocks per client and round (``random-cover`` with ``allocation-cover``); per-block mean."""

    name = "fedra"
    summary = "random blocks per client and round, each block averaged over the clients that held it (the paper)"

    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        return random_allocation(capacities, num_layers, rng, cover=self.settings.cover)
