"""FedRA and the baselines on one engine: how each allocates blocks and what each client trains."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from fedra_core.allocation import sample_allocation, validate_capacities
from fedra_core.backbones import Backbone
from fedra_core.depthfl import EXIT_PREFIX, add_exits, exit_blocks
from fedra_core.lora import LoraSettings, add_lora
from fedra_core.state import block_of_key
from fedra_core.submodel import build_submodel

METHODS = ("fedra", "alllarge", "allsmall", "inclusivefl", "depthfl")


@dataclass(frozen=True)
class MethodSettings:
    """Which method runs, with its own knobs.

    name: one of METHODS. cover: FedRA draws with ``random-cover`` (every block held each round
    when the capacities allow it) instead of plain ``random``. depthfl_every: DepthFL exit interval.
    inclusivefl_beta: InclusiveFL momentum-distillation weight.
    """

    name: str = "fedra"
    cover: bool = False
    depthfl_every: int = 3
    inclusivefl_beta: float = 0.2

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}: allowed {list(METHODS)}")


def allocate(method: MethodSettings, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:
    """Return this round's bool allocation (clients x blocks) for ``method`` and the clients' capacities.

    FedRA: random blocks (``random-cover`` with ``cover``); ALLlarge: every block (capacities
    ignored: the upper bound); ALLsmall: every client the smallest capacity, as a prefix;
    InclusiveFL and DepthFL: a prefix of each client's capacity.
    """
    caps = validate_capacities(capacities, num_layers)
    if method.name == "fedra":
        return sample_allocation(caps, num_layers, rng, "random-cover" if method.cover else "random")
    if method.name == "alllarge":
        return sample_allocation(caps, num_layers, rng, "full")
    if method.name == "allsmall":
        return sample_allocation([min(caps)] * len(caps), num_layers, rng, "prefix")
    return sample_allocation(caps, num_layers, rng, "prefix")


def build_trainable_model(
    backbone: Backbone,
    blocks: Sequence[int],
    lora: LoraSettings,
    method: MethodSettings,
    device: str = "cpu",
) -> nn.Module:
    """Build the sub-model for ``blocks`` with LoRA (and DepthFL exits), frozen but for the trainable state.

    For DepthFL the model also carries ``exits`` (see :func:`fedra_core.depthfl.forward_outputs`);
    its plain forward is always the final head's logits.
    """
    model = add_lora(build_submodel(backbone, blocks, device), backbone.family, lora)
    if method.name == "depthfl":
        add_exits(model, method.depthfl_every, model.get_classifier().out_features)
    return model


def client_keys(keys: Iterable[str], blocks: Sequence[int], method: MethodSettings) -> list[str]:
    """Return the global keys a client holding ``blocks`` receives and must send back: the keys of its
    blocks, the shared keys and, for DepthFL, only the exits inside its prefix."""
    held = set(blocks)
    exits = {str(j) for j in exit_blocks(blocks, method.depthfl_every)} if method.name == "depthfl" else set()
    out = []
    for key in keys:
        j = block_of_key(key)
        if key.startswith(EXIT_PREFIX):
            if key[len(EXIT_PREFIX):].split(".", 1)[0] in exits:
                out.append(key)
        elif j is None or j in held:
            out.append(key)
    return out
