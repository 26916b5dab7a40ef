"""InclusiveFL: clients train prefixes of their capacity; momentum distillation from deeper blocks.

Before aggregation, the update of a client's top block is mixed with the momentum (last round's
aggregated update) of the blocks that the next deeper clients hold beyond it:
``d_top <- (1 - beta) d_top + beta * mean(m_j for those blocks j)``, matched by the key's suffix
within the block (``attn.proj.lora_A.weight``, ...), so shallow models learn what the deep layers
learned. The momentum is the method's server state: it is checkpointed and restored on resume.
The global model is evaluated after the deepest block any client holds
(``allocation.prefix_model_blocks``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedra_core.allocation import prefix_allocation, prefix_model_blocks
from pydantic import Field

from fedra_core.methods.base import Method, MethodConfig
from fedra_core.methods.registry import register_method
from fedra_core.state import State, block_of_key

Momentum = dict[str, torch.Tensor]  # global key of a block parameter -> last aggregated update


def _suffix(key: str, block: int) -> str:
    return key.split(f"blocks.{block}.", 1)[1]


def momentum_distill(
    global_state: Mapping[str, torch.Tensor],
    client_states: Sequence[Mapping[str, torch.Tensor]],
    allocation: np.ndarray,
    momentum: Momentum,
    beta: float = 0.2,
) -> list[State]:
    """Return new client states whose top-block LoRA carries distilled momentum from deeper blocks.

    Takes the global state the clients started from, their returned states, the prefix allocation,
    the momentum of the previous round (empty in round 1: states are returned unchanged) and the
    mixing weight beta in [0, 1].
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"inclusivefl beta {beta}: must lie in [0, 1]")
    depths = np.asarray(allocation, dtype=bool).sum(axis=1)
    present = sorted(set(int(d) for d in depths))
    out: list[State] = []
    for state, depth in zip(client_states, depths):
        new = dict(state)
        deeper = [d for d in present if d > depth]
        if momentum and deeper:
            extra = range(int(depth), deeper[0])
            top = int(depth) - 1
            for key, value in state.items():
                if block_of_key(key) != top or "lora_" not in key:
                    continue
                suffix = _suffix(key, top)
                sources = [momentum[f"blocks.{j}.{suffix}"] for j in extra if f"blocks.{j}.{suffix}" in momentum]
                if sources:
                    update = value - global_state[key]
                    mixed = (1.0 - beta) * update + beta * torch.stack(sources).mean(0)
                    new[key] = global_state[key] + mixed
        out.append(new)
    return out


def block_momentum(old_state: Mapping[str, torch.Tensor], new_state: Mapping[str, torch.Tensor]) -> Momentum:
    """Return the aggregated update of every block LoRA key between two global states."""
    return {
        k: new_state[k] - old_state[k]
        for k in new_state
        if block_of_key(k) is not None and "lora_" in k
    }


class InclusiveFLConfig(MethodConfig):
    """InclusiveFL's knob. inclusivefl-beta: the momentum-distillation weight in [0, 1]."""

    inclusivefl_beta: float = Field(0.2, alias="inclusivefl-beta", ge=0, le=1)


@register_method
class InclusiveFL(Method):
    """Prefixes of each client's capacity; momentum distillation into the shallower clients' top block."""

    name = "inclusivefl"
    summary = "clients train prefixes of their capacity; deeper blocks' momentum distilled into shallow tops"
    config_class = InclusiveFLConfig
    config: InclusiveFLConfig
    holder_mean = False  # mixes each client's top-block update with momentum before the mean

    def __init__(self, config: InclusiveFLConfig | None = None, num_rounds: int = 0) -> None:  # noqa: D107
        super().__init__(config, num_rounds)
        self.momentum: Momentum = {}

    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        return prefix_allocation(capacities, num_layers)

    def model_blocks(self, num_layers: int, capacities: Sequence[int]) -> list[int]:  # noqa: D102
        return prefix_model_blocks(capacities, num_layers)

    def aggregate(self, global_state, client_states, allocation, weights) -> State:  # noqa: D102
        mixed = momentum_distill(global_state, client_states, allocation, self.momentum, self.config.inclusivefl_beta)
        new_state = super().aggregate(global_state, mixed, allocation, weights)
        self.momentum = block_momentum(global_state, new_state)
        return new_state

    def state_dict(self) -> State:  # noqa: D102
        return dict(self.momentum)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:  # noqa: D102
        self.momentum = dict(state)
