"""Block allocation: which of the model's L blocks each client holds this round.

An allocation is a bool matrix (clients x blocks). Each method draws its own with one of these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def validate_capacities(capacities: Sequence[int], num_layers: int) -> list[int]:
    """Return ``capacities`` as a list of ints after checking each lies in 1..num_layers.

    Raises ValueError naming the bad value.
    """
    if int(num_layers) < 1:
        raise ValueError(f"num_layers={num_layers}: must be at least 1")
    caps = list(capacities)
    if not caps:
        raise ValueError("capacities is empty: an allocation needs at least one client")
    for i, k in enumerate(caps):
        if isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= num_layers:
            raise ValueError(f"capacity {k!r} of client {i}: must be an integer in 1..{num_layers}")
    return [int(k) for k in caps]


def random_allocation(capacities: Sequence[int], num_layers: int, rng: np.random.Generator, cover: bool = False) -> np.ndarray:
    """FedRA's draw: row i holds capacities[i] blocks drawn uniformly without replacement.

    With ``cover`` every block is held by at least one client whenever sum(capacities) >= L (and,
    when it is smaller, no block is held twice); each row stays uniform over blocks. Returns the
    bool matrix; ValueError on a capacity outside 1..L or no clients.
    """
    caps = validate_capacities(capacities, num_layers)
    alloc = np.zeros((len(caps), num_layers), dtype=bool)
    if cover:
        _cover(alloc, caps, rng)
    else:
        for i, k in enumerate(caps):
            alloc[i, rng.choice(num_layers, size=k, replace=False)] = True
    return alloc


def last_block_allocation(capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:
    """Every row holds the last block plus capacities[i] - 1 others drawn with ``random-cover`` from the
    first L - 1 blocks: the block under the head trains on every client each round, and the others
    are all held whenever the capacities allow it. Returns the bool matrix; ValueError as
    :func:`random_allocation`.
    """
    caps = validate_capacities(capacities, num_layers)
    alloc = np.zeros((len(caps), num_layers), dtype=bool)
    alloc[:, -1] = True
    if num_layers > 1:
        rest = np.zeros((len(caps), num_layers - 1), dtype=bool)
        _cover(rest, [k - 1 for k in caps], rng)
        alloc[:, :-1] = rest
    return alloc


def prefix_allocation(capacities: Sequence[int], num_layers: int) -> np.ndarray:
    """Row i holds blocks 0..capacities[i]-1 (the depth-based baselines); returns the bool matrix."""
    caps = validate_capacities(capacities, num_layers)
    alloc = np.zeros((len(caps), num_layers), dtype=bool)
    for i, k in enumerate(caps):
        alloc[i, :k] = True
    return alloc


def prefix_model_blocks(capacities: Sequence[int], num_layers: int) -> list[int]:
    """Return the blocks of a prefix method's global model: 0..max(capacities)-1, the deepest prefix
    any client trains (all ``num_layers`` with no capacities). Where nobody holds every block, the
    blocks beyond are never tuned and the head was trained after the deepest held block, so that
    prefix is the model these clients can ship, and the stronger one to evaluate."""
    caps = validate_capacities(capacities, num_layers) if capacities else [num_layers]
    return list(range(max(caps)))


def full_allocation(capacities: Sequence[int], num_layers: int) -> np.ndarray:
    """Every client holds every block (capacities are only validated); returns the bool matrix."""
    caps = validate_capacities(capacities, num_layers)
    return np.ones((len(caps), num_layers), dtype=bool)


def _cover(alloc: np.ndarray, caps: list[int], rng: np.random.Generator) -> None:
    # Deal a random permutation of the blocks onto a shuffled list of client slots, so each block
    # lands on some client; clients then fill their remaining slots at random. Blocks and slots are
    # both shuffled, so each client's row is still uniform over blocks.
    num_layers = alloc.shape[1]
    slots = rng.permutation(np.repeat(np.arange(len(caps)), caps))
    blocks = rng.permutation(num_layers)
    for block, client in zip(blocks, slots):
        alloc[client, block] = True
    for i, k in enumerate(caps):
        missing = k - int(alloc[i].sum())
        if missing > 0:
            free = np.flatnonzero(~alloc[i])
            alloc[i, rng.choice(free, size=missing, replace=False)] = True


def rows_to_blocks(allocation: np.ndarray) -> list[list[int]]:
    """Return, for each row of a bool allocation matrix, its sorted list of held block indices."""
    return [np.flatnonzero(row).tolist() for row in np.asarray(allocation, dtype=bool)]
