"""FedRA: every round each client trains a fresh random subset of blocks, as many as it can hold."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from fedra_core.allocation import last_block_allocation, random_allocation
from fedra_core.methods.base import LocalRound, Method, MethodConfig
from fedra_core.methods.registry import register_method
from fedra_core.state import State, keys_for_blocks


class FedRAConfig(MethodConfig):
    """FedRA's knobs (the defaults are the paper's FedRA).

    allocation: the draw. ``random`` (the paper: k_i blocks uniformly at random), ``cover`` (the
    same, but every block held each round when the capacities sum to at least L), ``last`` (the last
    block on every client, the others drawn as ``cover``).
    head-calibration-steps: head steps on full-depth features after local training (0: off, the
    paper); the client then receives the rest of the global state read-only.
    """

    allocation: Literal["random", "cover", "last"] = "random"
    head_calibration_steps: int = Field(0, alias="head-calibration-steps", ge=0)


@register_method
class FedRA(Method):
    """Random blocks per client and round, per-block mean; options: the ``allocation`` policy and
    full-depth head calibration (``head-calibration-steps``)."""

    name = "fedra"
    summary = "random blocks per client and round, each block averaged over the clients that held it (the paper)"
    config_class = FedRAConfig
    client_step = "calibrate"
    config: FedRAConfig

    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        if self.config.allocation == "last":
            return last_block_allocation(capacities, num_layers, rng)
        return random_allocation(capacities, num_layers, rng, cover=self.config.allocation == "cover")

    def context_keys(self, keys: Iterable[str], blocks: Sequence[int]) -> list[str]:
        """With head calibration: every other block's global state (the client runs the full depth)."""
        if not self.config.head_calibration_steps:
            return []
        keys = list(keys)
        own = set(keys_for_blocks(keys, blocks))
        return [k for k in keys if k not in own]

    def after_local_training(self, job: LocalRound) -> State | None:
        """With head calibration, on a client that does not hold every block: the head trained on
        full-depth features of its trained blocks and the received state of the others."""
        if not self.config.head_calibration_steps or len(job.blocks) >= job.backbone.num_layers:
            return None
        from fedra_core.calibration import calibrate_head  # only clients that calibrate pay for it
        from fedra_core.trainable import ModelRecipe

        return calibrate_head(
            ModelRecipe(job.backbone, job.lora, self), {**job.context, **job.state}, job.data, job.capacity, job.settings,
            self.config.head_calibration_steps, job.device, seed=job.seed,
        )
