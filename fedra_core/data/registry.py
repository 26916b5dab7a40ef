"""The one registry of data: run-level datasets (what a simulation partitions) and node data formats
(what a SuperNode's node-config ``data-format`` names).

Every dataset is also a node format: one domain of it (node-config ``domain``, and ``data-root`` when
the dataset lives in a folder). Loaders are named by dotted path and imported only when data is
loaded, so the run config and the deploy launcher read these lists without importing torch.

Adding a dataset: a loader ``(DataSpec, domain, split) -> Dataset`` and a tuple of its domain names
in its own module, and one :class:`DatasetEntry` in :data:`DATASETS`. Adding a node format: a loader
``(NodeDataSpec, DataSpec, LabelSpace, img_size) -> NodeData`` and one :class:`NodeFormat` in
:data:`_OWN_FORMATS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetEntry:
    """A run-level dataset: ``name`` (the run config's ``dataset``), a one-line ``summary``,
    ``domains`` and ``loader`` as ``module:attribute`` paths (its domain names; its loader of one
    domain's split), ``num_classes`` (its default label space) and ``needs_root`` (read from a
    folder, ``data-root``)."""

    name: str
    summary: str
    domains: str
    loader: str
    num_classes: int
    needs_root: bool


@dataclass(frozen=True)
class NodeFormat:
    """A node data format: ``name`` (node-config ``data-format``), a one-line ``summary``, the
    node-config keys it ``needs``, its ``loader`` as a ``module:function`` path, and whether
    ``data-root`` is the node's ``own`` folder, which may change between messages (a warm node
    worker then reloads the data when a file in it changes; a published dataset is read once)."""

    name: str
    summary: str
    needs: tuple[str, ...]
    loader: str
    own: bool = False


DATASETS: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry("digits", "the offline digits benchmark: six visual domains of the ten digits, built from packages",
                     "fedra_core.data.digits:DIGITS_DOMAINS", "fedra_core.data.digits:digits_split", 10, needs_root=False),
        DatasetEntry("domainnet", "DomainNet's official splits, first num-classes classes (6 domains)",
                     "fedra_core.data.paper_datasets:DOMAINNET_DOMAINS", "fedra_core.data.paper_datasets:domainnet_split", 100, needs_root=True),
        DatasetEntry("nicopp", "NICO++'s official DG splits (6 domains, 60 classes)",
                     "fedra_core.data.paper_datasets:NICOPP_DOMAINS", "fedra_core.data.paper_datasets:nicopp_split", 60, needs_root=True),
        DatasetEntry("chatterbot", "English question/answer pairs of the chatterbot-corpus package, one topic a domain (21), for causal LMs",
                     "fedra_core.data.chatterbot:CHATTERBOT_DOMAINS", "fedra_core.data.chatterbot:chatterbot_split", 1, needs_root=False),
    )
}

_OWN_FORMATS: tuple[NodeFormat, ...] = (
    NodeFormat("imagefolder", "data-root/train/<class>/*.png|jpg|... and optionally data-root/test/<class>/...",
               ("data-root",), "fedra_core.data.node_data:load_imagefolder", own=True),
    NodeFormat("tokens", "data-root/train.safetensors (+ optional test.safetensors): int64 input_ids (N, T) and labels (N,)",
               ("data-root",), "fedra_core.data.node_data:load_tokens", own=True),
    NodeFormat("text-jsonl", "data-root/train.jsonl (+ optional test.jsonl): one {\"prompt\": ..., \"response\": ...} a line, for causal LMs",
               ("data-root",), "fedra_core.data.text:load_text_jsonl", own=True),
    NodeFormat("partition", "partition partition-id of the run's dataset (Flower's simulation gives partition-id)",
               ("partition-id",), "fedra_core.data.node_data:load_partition"),
)


def resolve(path: str) -> Any:
    """Return the object a ``module:attribute`` path names (importing the module)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def dataset_names() -> tuple[str, ...]:
    """Return the registered run-level datasets' names."""
    return tuple(DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    """Return the entry of dataset ``name``; ValueError names an unknown one and the allowed ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: allowed {list(DATASETS)}")
    return DATASETS[name]


def node_formats() -> dict[str, NodeFormat]:
    """Return every node data format by name: the own formats, then one domain of each dataset."""
    out = {f.name: f for f in _OWN_FORMATS}
    for d in DATASETS.values():
        needs = ("data-root", "domain") if d.needs_root else ("domain",)
        out[d.name] = NodeFormat(d.name, f"one domain of {d.summary}", needs, "fedra_core.data.node_data:load_dataset_domain")
    return out


def node_format(name: str) -> NodeFormat:
    """Return node format ``name``; ValueError names an unknown one and the allowed ones."""
    formats = node_formats()
    if name not in formats:
        raise ValueError(f"node-config 'data-format' = {name!r}: allowed {list(formats)}")
    return formats[name]
