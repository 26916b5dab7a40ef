"""What secure aggregation changes in the strategy and the config: allocations that keep every
aggregated block over at least ``secagg-min-holders`` nodes, the segment table of a round, and the
checks that refuse, before any training, what secure aggregation cannot do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedra_core.methods import Method
from fedra_core.run_config import ConfigError, RunConfig
from fedra_core.secure_sum import Segment, build_segments, thin_segments
from server_app.strategy import FedRAStrategy, NodeInfo

DRAWS = 50  # allocations drawn per round before a round with thin blocks is given up


class ThinAllocation(RuntimeError):
    """No allocation of the tries keeps every block over secagg-min-holders holders (one line)."""


def round_segments(method: Method, global_state: Mapping[str, torch.Tensor], allocation: np.ndarray, indexes: Sequence[int]) -> list[Segment]:
    """Return the segments of a round: row r of ``allocation`` is participant ``indexes[r]``, whose
    keys are the method's ``client_keys`` of its blocks; holders are participant indexes."""
    keys = list(global_state)
    held: dict[int, list[str]] = {}
    for index, row in zip(indexes, np.asarray(allocation, dtype=bool)):
        held[index] = method.client_keys(keys, np.flatnonzero(row).tolist())
    width = max(indexes) + 1 if indexes else 0
    per_index = [held.get(i, []) for i in range(width)]
    return build_segments(per_index, {k: int(v.numel()) for k, v in global_state.items()}, keys)


def constrained_allocation(
    method: Method, capacities: Sequence[int], num_layers: int, rng: np.random.Generator, global_state: Mapping[str, torch.Tensor],
    min_holders: int, draws: int = DRAWS,
) -> np.ndarray:
    """Return the method's first draw (of at most ``draws``) in which no segment has 1..min_holders-1
    holders; ThinAllocation when none does."""
    indexes = list(range(len(capacities)))
    thin: list[Segment] = []
    for _ in range(draws):
        allocation = method.allocate(capacities, num_layers, rng)
        thin = thin_segments(round_segments(method, global_state, allocation, indexes), min_holders)
        if not thin:
            return allocation
    where = ", ".join(_name(s) for s in thin[:3])
    raise ThinAllocation(
        f"config key 'secagg-min-holders' = {min_holders}: method {method.name!r} with capacities {list(capacities)} left "
        f"{where} with fewer holders in each of {draws} draws; add nodes or capacity, or allocation=cover"
    )


def _name(segment: Segment) -> str:
    blocks = sorted({k.split("blocks.", 1)[1].split(".", 1)[0] for k in segment.keys if "blocks." in k})
    what = f"block {blocks[0]}" if blocks else f"shared key {segment.keys[0]!r}"
    return f"{what} ({len(segment.holders)} holder{'s' if len(segment.holders) != 1 else ''})"


class SecAggStrategy(FedRAStrategy):
    """The FedRA strategy under secure aggregation: the round's participants can be narrowed to the
    nodes that completed the key exchange (``only``), and the allocation is redrawn until every
    aggregated block has at least ``min_holders`` holders."""

    min_holders: int = 2
    only: set[int] | None = None

    def participants(self, server_round: int) -> list[NodeInfo]:
        """The strategy's participants, narrowed to ``only`` when set."""
        nodes = super().participants(server_round)
        return nodes if self.only is None else [n for n in nodes if n.node_id in self.only]

    def allocate(self, nodes: list[NodeInfo], server_round: int, global_state) -> np.ndarray:
        """The method's draw, redrawn until no aggregated block has fewer than ``min_holders`` holders."""
        return constrained_allocation(self.method, [n.capacity for n in nodes], self.num_layers, self.round_rng(server_round),
                                      global_state, self.min_holders)


def check_config(cfg: RunConfig, method: Method) -> None:
    """Refuse (ConfigError, one line) a method that needs individual updates."""
    if cfg.secure_aggregation and not method.holder_mean:
        raise ConfigError(
            f"config key 'secure-aggregation' = true: method {method.name!r} needs each node's update (its server step "
            "is not the per-block mean of the holders); use fedra, alllarge, allsmall or depthfl"
        )


def check_nodes(strategy: SecAggStrategy, global_state: Mapping[str, torch.Tensor], seed: int) -> None:
    """Refuse (ConfigError naming secagg-min-holders) the discovered nodes' capacities when no
    allocation of :data:`DRAWS` keeps every aggregated block over ``min_holders`` holders."""
    nodes = strategy.participants(1)
    if len(nodes) < max(2, strategy.min_holders):
        raise ConfigError(f"config key 'secagg-min-holders' = {strategy.min_holders}: secure aggregation needs at least "
                          f"{max(2, strategy.min_holders)} nodes per round, {len(nodes)} take part")
    try:
        constrained_allocation(strategy.method, [n.capacity for n in nodes], strategy.num_layers, np.random.default_rng([seed, 0, 7]),
                               global_state, strategy.min_holders)
    except ThinAllocation as exc:
        raise ConfigError(str(exc)) from None
