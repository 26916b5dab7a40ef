"""ALLsmall: every client trains the first blocks that the smallest client can hold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedra_core.allocation import prefix_allocation, validate_capacities
from fedra_core.methods.base import Method
from fedra_core.methods.registry import register_method


@register_method
class AllSmall(Method):
    """A prefix of the smallest capacity for every client."""

    name = "allsmall"
    summary = "every client trains the first k_min blocks (k_min the smallest capacity)"

    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        caps = validate_capacities(capacities, num_layers)
        return prefix_allocation([min(caps)] * len(caps), num_layers)
