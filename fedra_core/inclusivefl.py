"""InclusiveFL baseline: momentum distillation from deeper blocks into shallower clients' top block.

Clients hold prefixes of the model. Before aggregation, the update of a client's top block is
mixed with the momentum (last round's aggregated update) of the blocks that the next deeper
clients hold beyond it: ``d_top <- (1 - beta) d_top + beta * mean(m_j for those blocks j)``,
matched by the key's suffix within the block (``attn.proj.lora_A.weight``, ...). This lets the
shallow models learn what the deep layers learned, as InclusiveFL proposes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

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
