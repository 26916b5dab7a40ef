"""Trainable state keyed by global block index.

A key belongs to block j exactly when it contains the segment ``blocks.{j}.``; every other key
(head, final norm, DepthFL exits, embedding adapters) is shared. Sub-models keep the global index
in their module names, so their keys need no translation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

_BLOCK_SEGMENT = re.compile(r"(?:^|\.)blocks\.(\d+)\.")

State = dict[str, torch.Tensor]


def block_of_key(key: str) -> int | None:
    """Return the global block index a state key belongs to, or None for a shared key."""
    match = _BLOCK_SEGMENT.search(key)
    return int(match.group(1)) if match else None


def keys_for_blocks(keys: Iterable[str], blocks: Iterable[int]) -> list[str]:
    """Return the keys of ``keys`` that belong to one of ``blocks`` or are shared, in input order."""
    wanted = set(blocks)
    out = []
    for key in keys:
        j = block_of_key(key)
        if j is None or j in wanted:
            out.append(key)
    return out


def select_state(state: Mapping[str, torch.Tensor], blocks: Iterable[int]) -> State:
    """Return the part of ``state`` a client holding ``blocks`` receives: their keys plus the shared keys."""
    return {k: state[k] for k in keys_for_blocks(state, blocks)}


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    """Return the total number of bytes of the tensors in ``state``."""
    return sum(t.numel() * t.element_size() for t in state.values())


def clone_state(state: Mapping[str, torch.Tensor]) -> State:
    """Return a detached CPU copy of ``state``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
