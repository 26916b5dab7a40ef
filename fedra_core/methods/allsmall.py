"""ALLsmall: the global model is the first k_min blocks (k_min the smallest capacity); every client
trains it and it is evaluated as that k_min-block model, as in the FedRA reference code."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedra_core.allocation import prefix_allocation, validate_capacities
from fedra_core.methods.base import Method
from fedra_core.methods.registry import register_method


@register_method
class AllSmall(Method):
    """A model of the smallest capacity's depth: every client trains it, it is what is evaluated."""

    name = "allsmall"
    summary = "the global model is the first k_min blocks (k_min the smallest capacity), trained and evaluated at that depth"

    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        caps = validate_capacities(capacities, num_layers)
        return prefix_allocation([min(caps)] * len(caps), num_layers)

    def model_blocks(self, num_layers: int, capacities: Sequence[int]) -> list[int]:  # noqa: D102
        caps = validate_capacities(capacities, num_layers) if capacities else [num_layers]
        return list(range(min(caps)))
