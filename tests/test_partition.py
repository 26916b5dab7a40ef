"""Tests for fedra_core.data.partition: Dirichlet label skew, client shards, per-round sampling."""

from __future__ import annotations

import numpy as np
import pytest

from fedra_core.data.partition import (
    ClientShard,
    dirichlet_label_split,
    feature_label_skew,
    feature_skew,
    sample_round_clients,
)

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def balanced_labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def assert_partition(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.shape == (n,)
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


def class_share_hhi(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over classes of sum_j (share of the class held by client j)^2."""
    classes = np.unique(labels)
    counts = np.stack([np.bincount(labels[p], minlength=classes.size) for p in parts])  # clients x classes
    shares = counts / counts.sum(axis=0, keepdims=True)
    return float((shares**2).sum(axis=0).mean())


def label_tv_to_overall(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Total-variation distance between each client's label distribution and the overall one."""
    k = int(labels.max()) + 1
    overall = np.bincount(labels, minlength=k) / labels.size
    return np.array([0.5 * np.abs(np.bincount(labels[p], minlength=k) / p.size - overall).sum() for p in parts])


# ---------------------------------------------------------------- dirichlet_label_split


@pytest.mark.parametrize("alpha", [0.05, 0.5, 1000.0])
@pytest.mark.parametrize("balance", [False, True])
def test_dirichlet_split_is_a_partition(alpha: float, balance: bool) -> None:
    labels = balanced_labels(20, 30)
    parts = dirichlet_label_split(labels, 5, alpha, np.random.default_rng(1), balance=balance)
    assert len(parts) == 5
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    assert_partition(parts, labels.size)


def test_dirichlet_split_partition_with_unbalanced_and_sparse_labels() -> None:
    # Uneven class sizes and label values that skip numbers.
    labels = np.array([7] * 50 + [3] * 5 + [11] * 1 + [0] * 20, dtype=np.int32)
    parts = dirichlet_label_split(labels, 4, 0.5, np.random.default_rng(3), min_size=2)
    assert_partition(parts, labels.size)
    assert min(p.size for p in parts) >= 2


# For a Dirichlet(alpha * 1_n) vector p, E[p_j^2] = alpha (alpha + 1) / (n alpha (n alpha + 1)), so the
# expected per-class concentration sum_j p_j^2 is (alpha + 1) / (n alpha + 1): 0.84 for alpha=0.05,
# n=5 and 0.2002 for alpha=1000 (1/n = 0.2 for an even split). Over 100 classes the standard
# deviation of the mean is about 0.02 for alpha=0.05 (checked by sampling the Dirichlet directly).
@pytest.mark.parametrize("alpha,tol", [(0.05, 0.1), (0.5, 0.1), (1000.0, 0.01)])
def test_dirichlet_class_concentration_matches_dirichlet_expectation(alpha: float, tol: float) -> None:
    n_clients = 5
    labels = balanced_labels(100, 100)
    parts = dirichlet_label_split(labels, n_clients, alpha, np.random.default_rng(7))
    expected = (alpha + 1) / (n_clients * alpha + 1)
    assert abs(class_share_hhi(labels, parts) - expected) < tol


def test_small_alpha_skews_clients_large_alpha_matches_overall_distribution() -> None:
    labels = balanced_labels(100, 100)
    skewed = dirichlet_label_split(labels, 5, 0.05, np.random.default_rng(11))
    even = dirichlet_label_split(labels, 5, 1000.0, np.random.default_rng(11))
    # alpha=0.05: each class goes almost entirely to one client, so a client sees roughly a fifth of
    # the classes and its TV distance to the (uniform) overall mix is near 1 - 1/5.
    assert label_tv_to_overall(labels, skewed).mean() > 0.5
    # alpha=1000: shares are 1/5 with relative std sqrt(4 / 5001) ~ 3 %, so TV is a few percent at most.
    assert label_tv_to_overall(labels, even).max() < 0.05
    sizes = np.array([p.size for p in even])
    assert np.all(np.abs(sizes - labels.size / 5) < 0.05 * labels.size / 5)


def test_balance_keeps_client_sizes_closer() -> None:
    labels = balanced_labels(100, 50)
    spread = {}
    for balance in (False, True):
        cvs = []
        for seed in range(5):
            parts = dirichlet_label_split(labels, 5, 0.1, np.random.default_rng(seed), balance=balance)
            sizes = np.array([p.size for p in parts])
            cvs.append(sizes.std() / sizes.mean())
        spread[balance] = float(np.mean(cvs))
    assert spread[True] < spread[False]


def test_dirichlet_min_size_respected() -> None:
    labels = balanced_labels(10, 20)
    parts = dirichlet_label_split(labels, 5, 0.1, np.random.default_rng(0), min_size=15)
    assert min(p.size for p in parts) >= 15
    assert_partition(parts, labels.size)


def test_dirichlet_deterministic_given_rng_state() -> None:
    labels = balanced_labels(30, 20)
    a = dirichlet_label_split(labels, 5, 0.5, np.random.default_rng(42))
    b = dirichlet_label_split(labels, 5, 0.5, np.random.default_rng(42))
    c = dirichlet_label_split(labels, 5, 0.5, np.random.default_rng(43))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_clients=0), r"num_clients=0"),
        (dict(num_clients=2.5), r"num_clients=2\.5"),
        (dict(alpha=0.0), r"alpha=0\.0.*> 0"),
        (dict(alpha=-1.0), r"alpha=-1\.0.*> 0"),
        (dict(alpha=float("nan")), r"alpha=nan"),
        (dict(min_size=-1), r"min_size=-1"),
        (dict(min_size=50), r"min_size=50.*250 examples.*only 100"),
    ],
)
def test_dirichlet_bad_arguments(kwargs: dict, match: str) -> None:
    args = dict(labels=balanced_labels(10, 10), num_clients=5, alpha=0.5, rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dirichlet_label_split(**args)


def test_dirichlet_bad_labels() -> None:
    with pytest.raises(ValueError, match="1-D integer array"):
        dirichlet_label_split(np.zeros((3, 2), dtype=int), 2, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="1-D integer array"):
        dirichlet_label_split(np.array([0.5, 1.0]), 2, 0.5, np.random.default_rng(0))


def test_dirichlet_unreachable_min_size_stops() -> None:
    # One class of 10 examples, tiny alpha: the class almost never splits 5 ways evenly enough.
    labels = np.zeros(10, dtype=np.int64)
    with pytest.raises(ValueError, match=r"min_size=2.*raise alpha or lower min_size"):
        dirichlet_label_split(labels, 5, 1e-3, np.random.default_rng(0), min_size=2)


# ---------------------------------------------------------------- shards


def test_feature_skew_one_client_per_domain() -> None:
    sizes = {"clipart": 5, "real": 3}
    shards = feature_skew(sizes)
    assert [s.domain for s in shards] == ["clipart", "real"]
    np.testing.assert_array_equal(shards[0].indices, np.arange(5))
    assert len(shards[1]) == 3


@pytest.mark.parametrize("sizes,match", [({}, "empty"), ({"real": 0}, r"'real'.*0"), ({"real": -2}, "-2")])
def test_feature_skew_errors(sizes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        feature_skew(sizes)


def test_client_shard_indices_are_read_only() -> None:
    shard = ClientShard("real", [3, 1])
    assert shard.indices.dtype == np.int64
    with pytest.raises(ValueError):
        shard.indices[0] = 9


def paper_domain_labels() -> dict[str, np.ndarray]:
    return {d: balanced_labels(20, 15 + 3 * i, seed=i) for i, d in enumerate(DOMAINS)}


def test_feature_label_skew_layout_and_partition() -> None:
    domain_labels = paper_domain_labels()
    shards = feature_label_skew(domain_labels, clients_per_domain=5, alpha=0.5, seed=0)
    assert len(shards) == 30
    assert [s.domain for s in shards] == [d for d in DOMAINS for _ in range(5)]
    for i, d in enumerate(DOMAINS):
        mine = shards[5 * i : 5 * i + 5]
        assert_partition([s.indices for s in mine], domain_labels[d].size)
        assert min(len(s) for s in mine) >= 10  # the reference code's minimum


def test_feature_label_skew_deterministic_and_per_domain_stable() -> None:
    domain_labels = paper_domain_labels()
    a = feature_label_skew(domain_labels, 5, 0.5, seed=3)
    b = feature_label_skew(domain_labels, 5, 0.5, seed=3)
    c = feature_label_skew(domain_labels, 5, 0.5, seed=4)
    assert all(np.array_equal(x.indices, y.indices) for x, y in zip(a, b))
    assert not all(np.array_equal(x.indices, y.indices) for x, y in zip(a, c))
    # Dropping a domain does not change the others' splits.
    only_real = feature_label_skew({"real": domain_labels["real"]}, 5, 0.5, seed=3)
    real = [s for s in a if s.domain == "real"]
    assert all(np.array_equal(x.indices, y.indices) for x, y in zip(only_real, real))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(clients_per_domain=0), "clients_per_domain=0"),
        (dict(alpha=0), r"alpha=0\b"),
        (dict(seed=-1), "seed=-1"),
        (dict(min_size=100), r"domain 'clipart'.*min_size=100"),
    ],
)
def test_feature_label_skew_errors(kwargs: dict, match: str) -> None:
    args = dict(domain_labels=paper_domain_labels(), clients_per_domain=5, alpha=0.5, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        feature_label_skew(**args)
    with pytest.raises(ValueError, match="empty"):
        feature_label_skew({}, 5, 0.5, 0)


# ---------------------------------------------------------------- sampling


def test_per_domain_sampling_one_client_per_domain_and_full_coverage() -> None:
    shards = feature_label_skew(paper_domain_labels(), 5, 0.5, seed=0)
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for _ in range(200):
        picked = sample_round_clients([s.domain for s in shards], rng)
        assert picked == sorted(picked)
        assert sorted(shards[i].domain for i in picked) == sorted(DOMAINS)
        seen.update(picked)
    assert seen == set(range(30))


def test_per_domain_sampling_deterministic() -> None:
    shards = feature_label_skew(paper_domain_labels(), 5, 0.5, seed=0)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    first = [sample_round_clients([s.domain for s in shards], r1) for _ in range(10)]
    assert first == [sample_round_clients([s.domain for s in shards], r2) for _ in range(10)]


def test_uniform_and_all_modes() -> None:
    shards = feature_label_skew(paper_domain_labels(), 5, 0.5, seed=0)
    rng = np.random.default_rng(1)
    picked = sample_round_clients([s.domain for s in shards], rng, mode="uniform", num_clients=7)
    assert len(set(picked)) == 7 and all(0 <= i < 30 for i in picked)
    assert sample_round_clients([s.domain for s in shards], rng, mode="all") == list(range(30))
    assert sample_round_clients([s.domain for s in shards], rng, mode="all", num_clients=30) == list(range(30))
    assert len(sample_round_clients([s.domain for s in shards], rng, mode="per-domain", num_clients=6)) == 6


@pytest.mark.parametrize(
    "mode,num_clients,match",
    [
        ("random", None, r"'random'.*per-domain, uniform, all"),
        ("uniform", None, r"needs num_clients.*1\.\.30"),
        ("uniform", 0, "num_clients=0"),
        ("uniform", 31, r"num_clients=31.*only 30.*1\.\.30"),
        ("all", 5, r"num_clients=5.*'all'.*30"),
        ("per-domain", 5, r"num_clients=5.*'per-domain'.*\(6\)"),
    ],
)
def test_sampling_errors(mode: str, num_clients: int | None, match: str) -> None:
    shards = feature_label_skew(paper_domain_labels(), 5, 0.5, seed=0)
    with pytest.raises(ValueError, match=match):
        sample_round_clients([s.domain for s in shards], np.random.default_rng(0), mode=mode, num_clients=num_clients)


def test_sampling_empty_shards() -> None:
    with pytest.raises(ValueError, match="no client to sample"):
        sample_round_clients([], np.random.default_rng(0))
