"""What a node knows locally: its settings (node-config over run-config), backbone, device and its own data."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import torch
from flwr.app import Context

from fedra_core.backbones import Backbone, BackboneSpec, input_size, resolve_backbone
from fedra_core.data.federation import client_shards, domains_of
from fedra_core.data.node_data import NodeData, NodeDataError, NodeDataSpec, load_node_data
from fedra_core.data.registry import node_format, node_formats
from fedra_core.run_config import ConfigError, RunConfig, load_run_config

from client_app import worker_config

if TYPE_CHECKING:  # built on first use: a capacity query imports no timm or peft
    from fedra_core.trainable import ModelRecipe

NODE_KEYS = (
    "data-format", "data-root", "domain", "partition-id", "num-partitions", "capacity-layers", "device",
    "backbone-weights", "num-threads", *worker_config.KEYS,
)


@lru_cache(maxsize=2)  # a warm worker keeps the backbones of at most two runs' settings
def _backbone(spec: BackboneSpec) -> Backbone:
    return resolve_backbone(spec)


@lru_cache(maxsize=4)
def _run_config(items: tuple) -> RunConfig:
    return load_run_config(dict(items))


_NODE_DATA: dict[tuple, tuple[tuple, NodeData]] = {}  # (arguments) -> (folder stamp, data), the latest 8


def _node_data(spec: NodeDataSpec, *args: object) -> NodeData:
    """load_node_data, kept in memory between messages (a warm worker, Flower's simulation) and
    loaded again when a file of the node's own folder changed, as a fresh process would."""
    key = (spec, *args)
    stamp = _folder_stamp(spec.root) if node_format(spec.data_format).own else ()
    hit = _NODE_DATA.pop(key, None)
    data = hit[1] if hit is not None and hit[0] == stamp else load_node_data(spec, *args)
    _NODE_DATA[key] = (stamp, data)
    while len(_NODE_DATA) > 8:
        _NODE_DATA.pop(next(iter(_NODE_DATA)))
    return data


def _folder_stamp(root: str) -> tuple:
    """(path, size, mtime, ctime, inode) of every file under ``root``, sorted: changes with any file."""
    out = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            out.append((folder, name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(sorted(out))


@dataclass
class NodeRuntime:
    """A node's validated settings and lazily built resources.

    node-config keys (deployment: ``flower-supernode --node-config``; Flower's simulation gives
    partition-id and num-partitions): data-format (imagefolder, tokens, domainnet, nicopp, digits, partition;
    default partition when partition-id is given), data-root, domain, partition-id (partition format),
    capacity-layers (else the run's ``capacities`` entry for this partition or domain), device
    (``cpu``, ``cuda``, ``cuda:1``; default: cuda when available), backbone-weights (a local
    .safetensors overriding the run's), num-threads, and the warm worker's node-worker,
    node-worker-idle, node-worker-timeout (client_app/worker_config.py).
    """

    cfg: RunConfig
    data_spec: NodeDataSpec
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
        fmt = str(node_cfg.get("data-format", "partition" if "partition-id" in node_cfg else ""))
        run_items = dict(context.run_config)
        if fmt == "partition" and node_cfg.get("data-root"):  # the node's copy of the partitioned dataset
            run_items["data-root"] = str(node_cfg["data-root"])
        cfg = _run_config(tuple(sorted(run_items.items(), key=lambda kv: kv[0])))
        if not fmt:
            raise ConfigError(
                "node-config lacks 'data-format': name this node's own data, e.g. "
                "\"data-format='imagefolder' data-root='/data/mine'\" (allowed formats: " + ", ".join(node_formats()) + ")"
            )
        partition_id = _int(node_cfg["partition-id"], "partition-id", 0) if "partition-id" in node_cfg else None
        try:
            data_spec = NodeDataSpec(fmt, str(node_cfg.get("data-root", "")), str(node_cfg.get("domain", "")), partition_id)
        except NodeDataError as exc:
            raise ConfigError(str(exc)) from None
        if "num-threads" in node_cfg:
            torch.set_num_threads(_int(node_cfg["num-threads"], "num-threads", 1))
        capacity = (
            _int(node_cfg["capacity-layers"], "capacity-layers", 1)
            if "capacity-layers" in node_cfg
            else _capacity_from_run(cfg, data_spec)
        )
        return cls(cfg, data_spec, capacity, _device(str(node_cfg.get("device", "auto"))), node_cfg.get("backbone-weights"))

    @cached_property
    def backbone(self) -> Backbone:
        """The node's local frozen backbone (built or read once per process)."""
        backbone = _backbone(self.cfg.backbone_spec(self.weights_override))
        if not 1 <= self.capacity <= backbone.num_layers:
            raise ConfigError(f"node-config 'capacity-layers' = {self.capacity}: must lie in 1..{backbone.num_layers}")
        return backbone

    @cached_property
    def recipe(self) -> ModelRecipe:
        """What builds the node's models: its backbone, the run's LoRA settings and method."""
        return self.cfg.recipe(self.backbone)

    @cached_property
    def data(self) -> NodeData:
        """The node's own training and test split (ConfigError names a bad node-config value)."""
        try:
            cfg = self.cfg
            return _node_data(self.data_spec, cfg.data_spec(), cfg.label_space(), input_size(self.backbone.spec), cfg.eval_max_examples)
        except NodeDataError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def seed_offset(self) -> int:
        """A per-node integer for the node's training seed: the partition id, else a hash of its data."""
        if self.data_spec.partition_id is not None and self.data_spec.data_format == "partition":
            return self.data_spec.partition_id
        spec = self.data_spec
        return zlib.crc32(f"{spec.data_format}:{spec.domain}:{spec.root}".encode())

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


def _capacity_from_run(cfg: RunConfig, data: NodeDataSpec) -> int:
    caps = cfg.capacities
    if data.data_format == "partition":
        shards = client_shards(cfg.data_spec())
        if data.partition_id >= len(shards):
            raise ConfigError(f"node-config 'partition-id' = {data.partition_id}: this federation has partitions 0..{len(shards) - 1}")
        if len(caps) == len(shards):
            return caps[data.partition_id]
        domains = domains_of(cfg.data_spec())
        if len(caps) == len(domains) and data.partition_id < len(shards):
            return caps[domains.index(shards[data.partition_id].domain)]
        raise ConfigError(
            f"config key 'capacities' has {len(caps)} entries: give one per partition ({len(shards)}) or per domain "
            f"({len(domains)}), or set node-config capacity-layers"
        )
    domains = list(cfg.domains)
    if data.domain in domains and len(caps) == len(domains):
        return caps[domains.index(data.domain)]
    raise ConfigError(
        f"node-config lacks 'capacity-layers' (domain {data.domain!r} has no entry in the run's 'capacities'): "
        "give the number of blocks this node can train, e.g. capacity-layers=6"
    )
