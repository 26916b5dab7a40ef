"""Block allocation: which of the model's L blocks each client holds this round."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POLICIES = ("random", "random-cover", "prefix", "full")


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


def sample_allocation(
    capacities: Sequence[int],
    num_layers: int,
    rng: np.random.Generator,
    policy: str = "random",
) -> np.ndarray:
    """Draw an allocation matrix.

    Takes one capacity per client (how many blocks it can hold), the model depth L, a numpy
    generator and a policy:

    - ``random``: FedRA; row i holds capacities[i] blocks drawn uniformly without replacement.
    - ``random-cover``: like ``random`` but every block is held by at least one client whenever
      sum(capacities) >= L (and, when it is smaller, no block is held twice).
    - ``prefix``: row i holds blocks 0..k_i-1 (depth-based baselines).
    - ``full``: every client holds every block (capacities are only validated).

    Returns a bool array of shape (len(capacities), num_layers). Raises ValueError on a capacity
    outside 1..L, no clients or an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown allocation policy {policy!r}: allowed {list(POLICIES)}")
    caps = validate_capacities(capacities, num_layers)
    alloc = np.zeros((len(caps), num_layers), dtype=bool)
    if policy == "full":
        alloc[:] = True
    elif policy == "prefix":
        for i, k in enumerate(caps):
            alloc[i, :k] = True
    elif policy == "random":
        for i, k in enumerate(caps):
            alloc[i, rng.choice(num_layers, size=k, replace=False)] = True
    else:
        _cover(alloc, caps, rng)
    return alloc


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
