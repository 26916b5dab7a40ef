"""What a node knows locally: its settings (node-config over run-config), backbone, device and data."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
from flwr.app import Context
from torch.utils.data import Dataset

from fedra_core import Backbone, resolve_backbone
from fedra_core.backbones import BackboneSpec
from fedra_core.data.federation import client_shards, client_train_data, domains_of
from fedra_core.run_config import ConfigError, RunConfig, load_run_config

NODE_KEYS = ("partition-id", "num-partitions", "capacity-layers", "device", "backbone-weights", "data-root", "num-threads")


@lru_cache(maxsize=4)
def _backbone(spec: BackboneSpec) -> Backbone:
    return resolve_backbone(spec)


@lru_cache(maxsize=4)
def _run_config(items: tuple) -> RunConfig:
    return load_run_config(dict(items))


@dataclass
class NodeRuntime:
    """A node's validated settings and lazily built resources.

    node-config keys (deployment: ``flower-supernode --node-config``; simulation adds partition-id):
    partition-id (required), capacity-layers (else the run's ``capacities`` entry for this
    partition or its domain), device (``cpu``, ``cuda``, ``cuda:1``; default: cuda when available),
    backbone-weights (a local .safetensors overriding the run's), data-root, num-threads.
    """

    cfg: RunConfig
    partition_id: int
    capacity: int
    device: torch.device
    weights_override: str | None

    @classmethod
    def from_context(cls, context: Context) -> "NodeRuntime":
        """Validate the node-config and run-config of ``context``; ConfigError names any bad value."""
        node_cfg = dict(context.node_config)
        unknown = sorted(set(node_cfg) - set(NODE_KEYS))
        if unknown:
            raise ConfigError(f"unknown node-config key {unknown[0]!r}: allowed {list(NODE_KEYS)}")
        run_items = dict(context.run_config)
        if node_cfg.get("data-root"):
            run_items["data-root"] = str(node_cfg["data-root"])
        cfg = _run_config(tuple(sorted(run_items.items(), key=lambda kv: kv[0])))
        if "partition-id" not in node_cfg:
            raise ConfigError("node-config lacks 'partition-id': give each SuperNode its data partition")
        partition_id = _int(node_cfg["partition-id"], "partition-id", 0)
        if "num-threads" in node_cfg:
            torch.set_num_threads(_int(node_cfg["num-threads"], "num-threads", 1))
        capacity = (
            _int(node_cfg["capacity-layers"], "capacity-layers", 1)
            if "capacity-layers" in node_cfg
            else _capacity_from_run(cfg, partition_id)
        )
        return cls(cfg, partition_id, capacity, _device(str(node_cfg.get("device", "auto"))), node_cfg.get("backbone-weights"))

    @cached_property
    def backbone(self) -> Backbone:
        """The node's local frozen backbone (built or read once per process)."""
        backbone = _backbone(self.cfg.backbone_spec(self.weights_override))
        if not 1 <= self.capacity <= backbone.num_layers:
            raise ConfigError(f"node-config 'capacity-layers' = {self.capacity}: must lie in 1..{backbone.num_layers}")
        return backbone

    @cached_property
    def train_data(self) -> Dataset:
        """The node's training subset."""
        return client_train_data(self.cfg.data_spec(), self.partition_id)[1]

    def check_fingerprint(self, expected: str) -> None:
        """Refuse to train when the server's backbone fingerprint differs from ours."""
        if expected != self.backbone.fingerprint:
            raise ValueError(
                f"backbone fingerprint mismatch: the server has {expected}, this node has {self.backbone.fingerprint} "
                f"({self.backbone.path}); give the node the same backbone weights"
            )


def _int(value: object, key: str, minimum: int) -> int:
    try:
        out = int(str(value))
    except ValueError:
        raise ConfigError(f"node-config {key!r} = {value!r}: must be an integer >= {minimum}") from None
    if out < minimum:
        raise ConfigError(f"node-config {key!r} = {value!r}: must be an integer >= {minimum}")
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"node-config 'device' = {name!r}: this node has no CUDA device; use 'cpu' or 'auto'")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"node-config 'device' = {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None


def _capacity_from_run(cfg: RunConfig, partition_id: int) -> int:
    caps = cfg.capacities
    shards = client_shards(cfg.data_spec())
    if len(caps) == len(shards):
        return caps[partition_id]
    domains = domains_of(cfg.data_spec())
    if len(caps) == len(domains) and partition_id < len(shards):
        return caps[domains.index(shards[partition_id].domain)]
    raise ConfigError(
        f"config key 'capacities' has {len(caps)} entries: give one per partition ({len(shards)}) or per domain "
        f"({len(domains)}), or set node-config capacity-layers"
    )
