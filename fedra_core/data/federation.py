"""A federation's data: per-domain splits of the chosen dataset and the clients' shards of them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from torch.utils.data import Dataset, Subset

from fedra_core.data.partition import ClientShard, dataset_targets, eval_sample, feature_label_skew, feature_skew
from fedra_core.data.registry import dataset_entry, resolve


@dataclass(frozen=True)
class DataSpec:
    """Which data a run uses.

    dataset: a registered dataset (:data:`fedra_core.data.registry.DATASETS`: ``digits``,
    ``domainnet``, ``nicopp``); root: the dataset folder (for those read from one); domains: a subset of the dataset's domains (empty: all); partitioning:
    ``feature`` (one client per domain) or ``feature-label`` (clients_per_domain clients per domain,
    Dirichlet(alpha) over labels); num_classes: classes kept (0: the dataset default); tokenizer:
    the transformers folder of the run's tokenizer, which text datasets are tokenised with (empty
    when the backbone has none).
    """

    dataset: str = "digits"
    root: str = ""
    domains: tuple[str, ...] = ()
    partitioning: str = "feature"
    clients_per_domain: int = 5
    alpha: float = 0.5
    num_classes: int = 0
    img_size: int = 224
    seed: int = 0
    tokenizer: str = ""


def all_domains(dataset: str) -> tuple[str, ...]:
    """Return the domain names of a registered dataset; ValueError for an unknown dataset."""
    return tuple(resolve(dataset_entry(dataset).domains))


def domains_of(spec: DataSpec) -> tuple[str, ...]:
    """Return the run's domains in order, checking a requested subset against the dataset's domains."""
    known = all_domains(spec.dataset)
    for d in spec.domains:
        if d not in known:
            raise ValueError(f"unknown domain {d!r} for dataset {spec.dataset!r}: allowed {list(known)}")
    return tuple(spec.domains) or known


@lru_cache(maxsize=64)
def domain_split(spec: DataSpec, domain: str, split: str) -> Dataset:
    """Return one domain's ``train`` or ``test`` split with the dataset's registered loader (cached per process)."""
    return resolve(dataset_entry(spec.dataset).loader)(spec, domain, split)


@lru_cache(maxsize=8)
def client_shards(spec: DataSpec) -> tuple[ClientShard, ...]:
    """Return every client's shard, domain-major; the partition id of a client is its position here."""
    domains = domains_of(spec)
    if spec.partitioning == "feature":
        return tuple(feature_skew({d: len(domain_split(spec, d, "train")) for d in domains}))
    if spec.partitioning == "feature-label":
        labels = {d: dataset_targets(domain_split(spec, d, "train")) for d in domains}
        return tuple(feature_label_skew(labels, spec.clients_per_domain, spec.alpha, spec.seed))
    raise ValueError(f"unknown partitioning {spec.partitioning!r}: allowed 'feature', 'feature-label'")


def client_train_data(spec: DataSpec, partition_id: int) -> tuple[str, Dataset]:
    """Return (domain, training subset) of the client with ``partition_id``."""
    shards = client_shards(spec)
    if not 0 <= partition_id < len(shards):
        raise ValueError(f"partition-id {partition_id}: this federation has partitions 0..{len(shards) - 1}")
    shard = shards[partition_id]
    return shard.domain, Subset(domain_split(spec, shard.domain, "train"), shard.indices.tolist())


def test_sets(spec: DataSpec, max_examples: int = 0) -> dict[str, Dataset]:
    """Return every domain's test split, by domain; with ``max_examples`` the same seeded,
    class-stratified sample of each that the nodes evaluate (:func:`partition.eval_sample`)."""
    return {d: eval_sample(domain_split(spec, d, "test"), max_examples, spec.seed) for d in domains_of(spec)}
