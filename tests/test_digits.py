"""Tests of the offline multi-domain digits benchmark (fedra_core.data.digits)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fedra_core.data import digits
from fedra_core.data.digits import DIGITS_DOMAINS, build_digits, digits_domain, digits_pretrain, raw_domain


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("fedra_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDRA_CACHE", str(root))
        build_digits(0)
        yield root


def _hashes(x: torch.Tensor) -> set[bytes]:
    flat = x.reshape(len(x), -1).numpy()
    return {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat}


def test_sizes_labels_and_format(cache: Path) -> None:
    assert DIGITS_DOMAINS == ("mnist", "optdigits", "mnistm", "printed", "usps", "housenum")
    for dom in DIGITS_DOMAINS:
        for split, n in (("train", digits.TRAIN_PER_DOMAIN), ("test", digits.TEST_PER_DOMAIN)):
            x, y = raw_domain(dom, split)
            assert x.shape == (n, 3, 28, 28) and x.dtype == torch.uint8, (dom, split)
            assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10)), (dom, split)
    ds = digits_domain("printed", "test")
    x, y = ds.tensors
    assert x.dtype == torch.float32 and x.shape == (1000, 3, 28, 28) and y.dtype == torch.int64
    assert -1.0 - 1e-6 <= float(x.min()) and float(x.max()) <= 1.0 + 1e-6
    assert digits.digits_sizes(0)["mnist"] == {"train": 3000, "test": 1000}
    assert (digits.TEST_PER_DOMAIN, digits.TRAIN_PER_DOMAIN) == (1000, 3000)


def test_pretrain_split(cache: Path) -> None:
    train, test = digits_pretrain()
    assert train.tensors[0].shape[1:] == (3, 28, 28) and len(train) > 29000 and len(test) > 4900
    assert set(test.tensors[1].tolist()) == set(range(10))


def test_train_test_disjoint(cache: Path) -> None:
    for dom in (*DIGITS_DOMAINS, "pretrain"):
        assert not _hashes(raw_domain(dom, "train")[0]) & _hashes(raw_domain(dom, "test")[0]), dom


def test_mnist_sources_disjoint(cache: Path) -> None:
    for split in ("train", "test"):
        seen: set[int] = set()
        for dom in ("mnist", "mnistm", "usps", "pretrain"):
            idx = set(digits.source_indices(dom, split).tolist())
            assert len(idx) == len(raw_domain(dom, split)[1]) and not idx & seen, (dom, split)
            seen |= idx
    _, y = raw_domain("usps", "test")
    mnist_test_labels = digits._load_mnist()[3]
    assert np.array_equal(mnist_test_labels[digits.source_indices("usps", "test").numpy()], y.numpy())


def test_no_pretrain_image_in_benchmark(cache: Path) -> None:
    pretrain = _hashes(raw_domain("pretrain", "train")[0]) | _hashes(raw_domain("pretrain", "test")[0])
    for dom in DIGITS_DOMAINS:
        for split in ("train", "test"):
            assert not pretrain & _hashes(raw_domain(dom, split)[0]), (dom, split)


def test_domains_differ(cache: Path) -> None:
    # a nearest-centroid classifier on four per-image statistics must tell the domains apart
    def stats(x: torch.Tensor) -> np.ndarray:
        f = x.float() / 255
        grey = f.mean(1)
        return torch.stack(
            [f[:, 0].mean((1, 2)), f[:, 1].mean((1, 2)), f[:, 2].mean((1, 2)), grey.std((1, 2)),
             (f.max(1).values - f.min(1).values).mean((1, 2)), (grey > 0.5).float().mean((1, 2))], 1
        ).numpy()

    train = [stats(raw_domain(d, "train")[0]) for d in DIGITS_DOMAINS]
    centroids = np.stack([s.mean(0) for s in train])
    scale = np.concatenate(train).std(0)
    correct = 0
    for i, dom in enumerate(DIGITS_DOMAINS):
        s = stats(raw_domain(dom, "test")[0])
        dist = (((s[:, None, :] - centroids[None]) / scale) ** 2).sum(-1)
        votes = np.bincount(dist.argmin(1), minlength=len(DIGITS_DOMAINS))
        assert votes.argmax() == i, (dom, votes.tolist())  # each domain looks most like itself
        correct += int(votes[i])
    assert correct / (len(DIGITS_DOMAINS) * digits.TEST_PER_DOMAIN) > 0.6  # chance is 1/6


def test_deterministic_rebuild(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = digits.digits_file(0)
    monkeypatch.setenv("FEDRA_CACHE", str(tmp_path))
    second = build_digits(0)
    assert second != first and second.is_file()
    with safe_open(str(first), framework="pt") as a, safe_open(str(second), framework="pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


def test_bad_names(cache: Path) -> None:
    with pytest.raises(ValueError, match="'svhn'"):
        digits_domain("svhn", "train")
    with pytest.raises(ValueError, match="'val'"):
        digits_domain("mnist", "val")


def test_build_lock_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDRA_CACHE", str(tmp_path))
    calls = []

    def fake_build(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        calls.append(seed)
        time.sleep(0.3)
        return {"x": torch.zeros(2)}, {"seed": str(seed)}

    monkeypatch.setattr(digits, "_build_all", fake_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(build_digits(7))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [7] and len(set(results)) == 1 and results[0].is_file()
    assert not list(results[0].parent.glob("*.tmp"))
