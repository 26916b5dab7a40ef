"""FedRA aggregation: per-block means over the clients that held each block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedra_core.state import State, block_of_key


def aggregate_fedra(
    global_state: Mapping[str, torch.Tensor],
    client_states: Sequence[Mapping[str, torch.Tensor]],
    allocation: np.ndarray,
    weights: Sequence[float] | None = None,
) -> State:
    """Fold client states into a new global state.

    Takes the current global state, one state per client (keyed by global block index), the bool
    allocation matrix (clients x blocks) the states were trained under, and optional non-negative
    per-client weights (e.g. example counts; uniform when None).

    Returns a new dict: each key of block j is the weighted mean over the clients whose allocation
    row holds j and that returned the key; a shared key is the mean over the clients that returned
    it; a key nobody returned keeps its previous value. LoRA A and B are averaged separately, as
    FedRA does. Raises ValueError when a client returns a key of a block outside its row, a key
    the global state lacks or a tensor of the wrong shape, or when the sizes do not match.
    """
    n = len(client_states)
    w = np.ones(n, dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights {list(np.atleast_1d(w))}: expected {n} finite non-negative numbers")

    holders = key_holders(global_state, client_states, allocation)

    new_state: State = {}
    for key, old in global_state.items():
        ids = holders[key]
        total = float(w[ids].sum()) if ids else 0.0
        if total <= 0.0:
            new_state[key] = old.detach().clone()
            continue
        acc = torch.zeros(old.shape, dtype=torch.float32)
        for i in ids:
            acc.add_(client_states[i][key].detach().to(torch.float32), alpha=float(w[i]) / total)
        new_state[key] = acc.to(old.dtype)
    return new_state


def key_holders(
    global_state: Mapping[str, torch.Tensor], client_states: Sequence[Mapping[str, torch.Tensor]], allocation: np.ndarray
) -> dict[str, list[int]]:
    """Return, for every key of the global state, the indices of the clients that returned it.

    Raises ValueError when the bool ``allocation`` (clients x blocks) does not have one row per
    client state, or a client returns a key the global state lacks, a key of a block outside its
    allocation row, or a tensor of the wrong shape.
    """
    allocation = np.asarray(allocation, dtype=bool)
    n = len(client_states)
    if allocation.ndim != 2 or allocation.shape[0] != n:
        raise ValueError(f"allocation has shape {allocation.shape}, expected ({n}, num_layers) for {n} client states")
    holders: dict[str, list[int]] = {k: [] for k in global_state}
    for i, state in enumerate(client_states):
        for key, tensor in state.items():
            if key not in global_state:
                raise ValueError(f"client {i} returned key {key!r} that the global state does not have")
            j = block_of_key(key)
            if j is not None and not (0 <= j < allocation.shape[1] and allocation[i, j]):
                raise ValueError(f"client {i} returned key {key!r} of block {j}, which it was not allocated")
            if tuple(tensor.shape) != tuple(global_state[key].shape):
                raise ValueError(
                    f"client {i} returned {key!r} with shape {tuple(tensor.shape)}, expected {tuple(global_state[key].shape)}"
                )
            holders[key].append(i)
    return holders
