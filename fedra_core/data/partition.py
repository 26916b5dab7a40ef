"""Client partitions of multi-domain data and per-round client sampling.

Two settings from the paper: *feature skew* (one client per domain, holding that domain's whole
train split) and *feature & label skew* (``clients_per_domain`` clients per domain, the domain's
train split divided among them by a Dirichlet(alpha) split over labels; the paper uses 5 clients per
domain and alpha 0.5, i.e. 30 clients on six domains). Each round the paper trains one client per
domain (:func:`sample_round_clients` with ``mode="per-domain"``).

The Dirichlet split is implemented here with numpy rather than taken from Flower Datasets'
``DirichletPartitioner`` (flwr-datasets 0.6.1): that partitioner only accepts a Hugging Face
``datasets.Dataset``, so it would pull datasets, pyarrow, pandas, aiohttp, seaborn and more into the
environment and pin huggingface_hub back from 2.x to 1.x (the hub client timm uses), and it draws
from its own integer-seeded generator and gives up after 10 resampling attempts, whereas the
algorithm itself (per-class Dirichlet proportions, optional self-balancing, resample until every
client reaches a minimum size) is the same few lines implemented below.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SAMPLING_MODES: tuple[str, ...] = ("per-domain", "uniform", "all")
_MAX_TRIES = 1000


@dataclass(frozen=True, eq=False)
class ClientShard:
    """One client's data: ``indices`` (sorted, int64, read-only) into ``domain``'s train split."""

    domain: str
    indices: np.ndarray

    def __post_init__(self) -> None:
        idx = np.array(self.indices, dtype=np.int64).reshape(-1)
        idx.setflags(write=False)
        object.__setattr__(self, "indices", idx)

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name}={value!r}: must be an integer >= 1")
    return int(value)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise ValueError(f"alpha={alpha!r}: must be a number > 0")
    if not (math.isfinite(float(alpha)) and float(alpha) > 0):
        raise ValueError(f"alpha={alpha!r}: must be a finite number > 0")
    return float(alpha)


def feature_skew(domain_sizes: Mapping[str, int]) -> list[ClientShard]:
    """Feature skew: one client per domain, in the mapping's order, holding all of its ``size`` examples."""
    if not domain_sizes:
        raise ValueError("domain_sizes is empty: need at least one domain")
    shards = []
    for domain, size in domain_sizes.items():
        n = _positive_int(f"size of domain {domain!r}", size)
        shards.append(ClientShard(domain, np.arange(n, dtype=np.int64)))
    return shards


def dirichlet_label_split(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    *,
    balance: bool = False,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` among ``num_clients`` clients with a Dirichlet label skew.

    For every class c (in sorted order) the class's examples are shuffled and divided among the
    clients in proportions p_c ~ Dirichlet(alpha, ..., alpha), so a small ``alpha`` gives each
    client few classes and a large one gives each client the overall label mix. With ``balance``
    (the FedRA reference code's choice), a client already holding at least ``len(labels) /
    num_clients`` examples gets nothing of the later classes. The whole draw is repeated until
    every client has at least ``min_size`` examples (up to 1000 attempts).

    Returns one sorted int64 index array per client; together they are a partition of
    ``range(len(labels))``. Deterministic given the state of ``rng``. Raises ValueError for
    ``num_clients < 1``, ``alpha <= 0``, a negative ``min_size``, labels that are not a 1-D integer
    array, or a ``min_size`` that cannot be met.
    """
    num_clients = _positive_int("num_clients", num_clients)
    alpha = _check_alpha(alpha)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size={min_size!r}: must be an integer >= 0")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    n = labels.shape[0]
    if num_clients * min_size > n:
        raise ValueError(
            f"min_size={min_size} with num_clients={num_clients} needs {num_clients * min_size} examples, "
            f"only {n} given"
        )
    class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    fair_share = n / num_clients
    concentration = np.full(num_clients, alpha)
    for _ in range(_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in class_indices:
            idx = rng.permutation(idx)
            p = rng.dirichlet(concentration)
            if balance:
                kept = np.where(sizes < fair_share, p, 0.0)
                # With tiny alpha every remaining weight can underflow to 0: keep the raw draw then.
                if kept.sum() > 0:
                    p = kept
            p = p / p.sum()
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for j, chunk in enumerate(np.split(idx, cuts)):
                parts[j].append(chunk)
                sizes[j] += len(chunk)
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(chunks)) if chunks else np.empty(0, np.int64) for chunks in parts]
    raise ValueError(
        f"could not give each of {num_clients} clients at least min_size={min_size} of {n} examples with "
        f"alpha={alpha} in {_MAX_TRIES} attempts: raise alpha or lower min_size"
    )


def _domain_rng(seed: int, domain: str) -> np.random.Generator:
    # A stable per-domain stream (crc32, not the salted built-in hash) so that one domain's split
    # does not depend on which other domains are present or their order.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(domain.encode("utf-8")),)))


def feature_label_skew(
    domain_labels: Mapping[str, np.ndarray],
    clients_per_domain: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 10,
    balance: bool = True,
) -> list[ClientShard]:
    """Feature & label skew: ``clients_per_domain`` clients per domain, Dirichlet(alpha) over labels.

    ``domain_labels`` maps each domain to the labels of its train split. Clients are listed
    domain-major: the domain's clients in the mapping's order, then the next domain's. Defaults
    follow the FedRA reference code (self-balancing on, every client at least 10 examples); see
    :func:`dirichlet_label_split`. Deterministic given ``seed``; each domain draws from its own
    stream derived from ``seed`` and the domain name.
    """
    if not domain_labels:
        raise ValueError("domain_labels is empty: need at least one domain")
    clients_per_domain = _positive_int("clients_per_domain", clients_per_domain)
    alpha = _check_alpha(alpha)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be an integer >= 0")
    shards: list[ClientShard] = []
    for domain, labels in domain_labels.items():
        try:
            splits = dirichlet_label_split(
                labels, clients_per_domain, alpha, _domain_rng(int(seed), domain), min_size, balance=balance
            )
        except ValueError as e:
            raise ValueError(f"domain {domain!r}: {e}") from None
        shards.extend(ClientShard(domain, idx) for idx in splits)
    return shards


def sample_round_clients(
    domains: Sequence[str],
    rng: np.random.Generator,
    mode: str = "per-domain",
    num_clients: int | None = None,
) -> list[int]:
    """Pick this round's clients among clients whose domains are ``domains``; returns sorted positions.

    Modes: ``per-domain`` draws one client uniformly among each domain's clients (the paper);
    ``uniform`` draws ``num_clients`` clients uniformly without replacement; ``all`` takes every
    client. ``num_clients`` is required for ``uniform``; for the other modes it may be left out or
    must equal the number the mode picks (domains, resp. clients). Deterministic given ``rng``.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown client sampling mode {mode!r}: must be one of {', '.join(SAMPLING_MODES)}")
    total = len(domains)
    if total == 0:
        raise ValueError("no client to sample")
    if mode == "uniform":
        if num_clients is None:
            raise ValueError(f"mode 'uniform' needs num_clients (an integer in 1..{total})")
        k = _positive_int("num_clients", num_clients)
        if k > total:
            raise ValueError(f"num_clients={k}: only {total} clients available (allowed 1..{total})")
        return sorted(int(i) for i in rng.choice(total, size=k, replace=False))
    if mode == "all":
        if num_clients is not None and num_clients != total:
            raise ValueError(f"num_clients={num_clients!r} with mode 'all': must be left out or equal {total}")
        return list(range(total))
    by_domain: dict[str, list[int]] = {}
    for i, domain in enumerate(domains):
        by_domain.setdefault(domain, []).append(i)
    if num_clients is not None and num_clients != len(by_domain):
        raise ValueError(
            f"num_clients={num_clients!r} with mode 'per-domain': must be left out or equal the "
            f"number of domains ({len(by_domain)})"
        )
    return sorted(members[int(rng.integers(len(members)))] for members in by_domain.values())


def stratified_indices(targets: np.ndarray, count: int, seed: int) -> list[int]:
    """Return ``count`` sorted indices into ``targets`` drawn with ``seed``, each class getting its
    share of ``count`` in proportion to its size (largest remainders round the shares; ties go to
    the lower label), uniformly at random within the class."""
    labels, sizes = np.unique(targets, return_counts=True)
    exact = count * sizes / sizes.sum()
    shares = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - shares), kind="stable")[: count - shares.sum()]:
        shares[i] += 1
    rng = np.random.default_rng([seed, 0x5EED])
    picked = [rng.permutation(np.flatnonzero(targets == label))[:share] for label, share in zip(labels, shares)]
    return sorted(int(i) for i in np.concatenate(picked))


def dataset_targets(ds) -> np.ndarray:
    """Return the labels of a dataset without loading its inputs: a ``Subset``'s through its parent,
    a ``TensorDataset``'s second tensor, else its ``labels`` or ``targets`` attribute."""
    from torch.utils.data import Subset, TensorDataset

    if isinstance(ds, Subset):
        return dataset_targets(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].numpy()
    if hasattr(ds, "labels"):
        return np.asarray(ds.labels)
    return np.asarray(getattr(ds, "targets"))


def eval_sample(ds, max_examples: int, seed: int):
    """Return ``ds`` itself, or a ``Subset`` of ``max_examples`` of it drawn by :func:`stratified_indices`
    when it holds more: what a node and the server evaluate under ``eval-max-examples``."""
    from torch.utils.data import Subset

    if not max_examples or len(ds) <= max_examples:
        return ds
    return Subset(ds, stratified_indices(dataset_targets(ds), max_examples, seed))
