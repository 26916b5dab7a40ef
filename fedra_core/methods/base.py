"""What a federated method decides, behind one small interface.

A method chooses each round's allocation, which global keys a client receives and returns, any
extra part of the client model and its loss (with values sent from the server each round), the
server-side step around the per-block aggregation, the state it must checkpoint, its own knobs
(a :class:`MethodConfig`) and any client step after local training. The engine,
the Flower apps and the benchmarks use only this interface; each method lives in its own module
and registers itself with :func:`fedra_core.methods.register_method`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedra_core.aggregation import aggregate_fedra
from fedra_core.backbones import Backbone
from fedra_core.families import ModelFamily
from fedra_core.lora import LoraSettings
from fedra_core.settings_model import SettingsModel
from fedra_core.state import State, keys_for_blocks
from fedra_core.training import TrainSettings


class MethodConfig(SettingsModel):
    """A method's own knobs; this base has none.

    A method with knobs subclasses it (peft's pattern: one config class per method, registered with
    it): one field per knob, its run-config key as the alias, a default, pydantic's constraints and a
    line of docstring. The run config validates every registered method's keys with these classes.
    """


@dataclass(frozen=True)
class LocalRound:
    """What a method's client step after local training may use.

    backbone: the node's frozen backbone; lora: the run's LoRA settings; blocks: the client's blocks this round; state: its
    trained state by canonical key (CPU); context: the read-only global state it received besides
    its own (:meth:`Method.context_keys`); data: its training split; capacity: the most blocks it may
    hold at a time; settings: the local training settings; device; seed: the step's seed.
    """

    backbone: Backbone
    lora: LoraSettings
    blocks: Sequence[int]
    state: Mapping[str, torch.Tensor]
    context: Mapping[str, torch.Tensor]
    data: Dataset
    capacity: int
    settings: TrainSettings
    device: torch.device
    seed: int


class Method:
    """A federated fine-tuning method; the defaults are FedRA's behaviour for everything but the
    allocation, which every method must define.

    Class attributes: ``name`` (the run config's ``method`` value), ``summary`` (one line for the
    README's method table), ``config_class`` (its knobs, a :class:`MethodConfig`), ``client_step``
    (the name of its step after local training, timed as ``t-<client_step>``; empty when it has
    none) and ``holder_mean`` (True when its server step is exactly the per-block mean of the
    holders' states, with no method-specific use of individual updates: what secure aggregation
    and per-block differential privacy can stand in for).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    client_step: ClassVar[str] = ""
    holder_mean: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None, num_rounds: int = 0) -> None:
        """Take the method's knobs (its ``config_class``; defaults when None) and the run's length."""
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"method {self.name!r} takes a {self.config_class.__name__}, not a {type(config).__name__}")
        self.config = config
        self.num_rounds = num_rounds

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
        """Return the client's training loss on a batch: the family objective's (cross-entropy of the
        model's logits for classification, mean token NLL on the response tokens for a causal LM)."""
        return family.objective.loss(family, model, inputs, labels)

    def after_local_training(self, job: LocalRound) -> State | None:
        """Return the keys of the client's trained state that the method's client step replaces after
        local training, or None when this round has no such step (the default)."""
        return None

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
