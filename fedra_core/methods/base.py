"""What a federated method decides, behind one small interface.

A method chooses each round's allocation, which global keys a client receives and returns, any
extra part of the client model and its loss (with values sent from the server each round), the
server-side step around the per-block aggregation, and the state it must checkpoint. The engine,
the Flower apps and the benchmarks use only this interface; each method lives in its own module
and registers itself with :func:`fedra_core.methods.register_method`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedra_core.aggregation import aggregate_fedra
from fedra_core.families import ModelFamily
from fedra_core.state import State, keys_for_blocks


@dataclass(frozen=True)
class MethodSettings:
    """Which method runs and the knobs of every method (each method reads its own).

    name: a registered method. allocation: FedRA's draw, one of :data:`ALLOCATIONS`.
    head_calibration_steps: FedRA option, head steps on full-depth features after local training
    (0: off, the paper). depthfl_every: DepthFL exit interval. depthfl_ramp_rounds: rounds of
    DepthFL's distillation-weight ramp (0: ``num_rounds``, the run's length; the reference code's
    is 500). inclusivefl_beta: InclusiveFL momentum weight. num_rounds: the run's length.
    """

    name: str = "fedra"
    allocation: str = "random"
    head_calibration_steps: int = 0
    depthfl_every: int = 3
    depthfl_ramp_rounds: int = 0
    inclusivefl_beta: float = 0.2
    num_rounds: int = 0


# FedRA's allocation policies: "random" (the paper: k_i blocks uniformly at random), "cover" (the same,
# but every block held each round when the capacities sum to at least L), "last" (the last block on
# every client, the others drawn as "cover")
ALLOCATIONS = ("random", "cover", "last")


class Method:
    """A federated fine-tuning method; the defaults are FedRA's behaviour for everything but the
    allocation, which every method must define.

    Class attributes: ``name`` (the run config's ``method`` value) and ``summary`` (one line for
    the README's method table).
    """

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, settings: MethodSettings) -> None:
        self.settings = settings

    # --- what each client holds -----------------------------------------------------------------
    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:
        """Return this round's bool allocation (clients x blocks) for the clients' ``capacities``."""
        raise NotImplementedError

    def extend_model(self, model: nn.Module, family: ModelFamily) -> nn.Module:
        """Add the method's own trainable modules to a freshly built (sub-)model; return it."""
        return model

    def client_keys(self, keys: Iterable[str], blocks: Sequence[int]) -> list[str]:
        """Return the global keys a client holding ``blocks`` receives and must send back."""
        return keys_for_blocks(keys, blocks)

    def context_keys(self, keys: Iterable[str], blocks: Sequence[int]) -> list[str]:
        """Return global keys a client holding ``blocks`` receives read-only besides its own (none by default)."""
        return []

    def model_blocks(self, num_layers: int, capacities: Sequence[int]) -> list[int]:
        """Return the blocks of the global model, as it is evaluated, for clients of ``capacities``
        (every block by default)."""
        return list(range(num_layers))

    # --- client training ------------------------------------------------------------------------
    def round_config(self, server_round: int) -> dict[str, float]:
        """Return the values the server sends with each training message of ``server_round``."""
        return {}

    def loss(
        self, model: nn.Module, family: ModelFamily, inputs: torch.Tensor, labels: torch.Tensor, round_config: Mapping[str, float]
    ) -> torch.Tensor:
        """Return the client's training loss on a batch: cross-entropy of the model's logits."""
        return F.cross_entropy(model(inputs).float(), labels)

    # --- server ---------------------------------------------------------------------------------
    def aggregate(
        self,
        global_state: Mapping[str, torch.Tensor],
        client_states: Sequence[Mapping[str, torch.Tensor]],
        allocation: np.ndarray,
        weights: Sequence[float] | None,
    ) -> State:
        """Fold the accepted client states into the next global state (FedRA's per-block mean)."""
        return aggregate_fedra(global_state, client_states, allocation, weights)

    def state_dict(self) -> State:
        """Return the method's own server state that a checkpoint must keep (none by default)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (from a checkpoint)."""
