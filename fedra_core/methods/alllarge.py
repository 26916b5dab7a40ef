"""ALLlarge: every client trains the whole model (an upper bound that ignores the clients' memory)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedra_core.allocation import full_allocation
from fedra_core.methods.base import Method
from fedra_core.methods.registry import register_method


@register_method
class AllLarge(Method):
    """Every client holds every block, whatever its capacity."""

    name = "alllarge"
    summary = "every client trains all blocks, capacities ignored (upper bound, infeasible for small clients)"

    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        return full_allocation(capacities, num_layers)
