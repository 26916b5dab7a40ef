"""The arithmetic of per-block secure aggregation (fedra_core.secure_sum), against plain numpy sums."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedra_core import secure_sum as ss

SHAPES = {"blocks.0.a": (4, 6), "blocks.0.b": (6, 4), "blocks.1.a": (4, 6), "blocks.2.a": (3, 5), "blocks.3.a": (7,), "head.weight": (5, 8)}


def _keys_of(row: np.ndarray) -> list[str]:
    return [k for k in SHAPES if not k.startswith("blocks.") or row[int(k.split(".")[1])]]


def _round(rng: np.random.Generator, n: int):
    """A random allocation of 4 blocks to n participants, their deltas, weights and pair seeds."""
    allocation = rng.random((n, 4)) < 0.6
    held = [_keys_of(row) for row in allocation]
    segments = ss.build_segments(held, {k: int(np.prod(s)) for k, s in SHAPES.items()}, list(SHAPES))
    deltas = [{k: rng.normal(0, 0.05, SHAPES[k]) for k in keys} for keys in held]
    weights = rng.uniform(0.1, 1.0, n)
    seeds = {}
    for u in range(n):
        for v in range(u + 1, n):
            seeds[(u, v)] = seeds[(v, u)] = os.urandom(32)
    return held, segments, deltas, weights, seeds


def _upload(i, segments, delta, weight, seeds, n, scale, self_seed, server_round=3):
    mine = ss.segments_of(segments, i)
    encoded = ss.encode_update(delta, weight, mine, 1.0, scale, np.random.default_rng(i))
    pair = {v: seeds[(i, v)] for v in range(n) if v != i}
    return ss.mask_update(encoded, i, mine, server_round, self_seed, pair)


def _plain_means(held, deltas, weights, survivors):
    """The weighted per-key mean over the surviving holders, straight from the float deltas."""
    out = {}
    for key in SHAPES:
        ids = [i for i in survivors if key in held[i]]
        if ids:
            out[key] = sum(weights[i] * deltas[i][key] for i in ids) / sum(weights[i] for i in ids)
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dropped", [(), (1,), (0, 2, 5)])
def test_masked_sum_is_the_plain_per_block_mean(seed, dropped):
    rng = np.random.default_rng(seed)
    n = 7
    held, segments, deltas, weights, seeds = _round(rng, n)
    scale = ss.scale_for(n)
    self_seeds = {i: os.urandom(32) for i in range(n)}
    uploads = {i: _upload(i, segments, deltas[i], weights[i], seeds, n, scale, self_seeds[i]) for i in range(n)}
    survivors = [i for i in range(n) if i not in dropped]
    sums = ss.sum_uploads({i: uploads[i] for i in survivors}, segments)
    pair = {(u, v): seeds[(u, v)] for u in survivors for v in dropped}
    clean = ss.remove_masks(sums, segments, 3, {u: self_seeds[u] for u in survivors}, pair)
    means = ss.means_by_key(ss.decode_sums(clean, segments, 1.0, scale), segments)
    expected = _plain_means(held, deltas, weights, survivors)
    assert set(means) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(means[key].reshape(SHAPES[key]), value, atol=1e-6)


def test_without_the_dropped_masks_the_sum_is_garbage():
    rng = np.random.default_rng(11)
    n = 5
    held, segments, deltas, weights, seeds = _round(rng, n)
    scale = ss.scale_for(n)
    self_seeds = {i: os.urandom(32) for i in range(n)}
    uploads = {i: _upload(i, segments, deltas[i], weights[i], seeds, n, scale, self_seeds[i]) for i in range(1, n)}
    clean = ss.remove_masks(ss.sum_uploads(uploads, segments), segments, 3, {u: self_seeds[u] for u in uploads}, {})
    means = ss.means_by_key(ss.decode_sums(clean, segments, 1.0, scale), segments)
    expected = _plain_means(held, deltas, weights, list(uploads))
    shared_with_0 = [k for s in segments if 0 in s.holders and len(s.holders) > 1 for k in s.keys]
    assert shared_with_0
    assert all(k not in means or not np.allclose(means[k].reshape(SHAPES[k]), expected[k], atol=1e-3) for k in shared_with_0)


def test_a_single_masked_upload_looks_like_noise():
    rng = np.random.default_rng(0)
    size = 20_000
    delta = {"blocks.0.w": rng.normal(0, 0.1, size)}
    segments = ss.build_segments([["blocks.0.w"], ["blocks.0.w"]], {"blocks.0.w": size}, ["blocks.0.w"])
    scale = ss.scale_for(2)
    encoded = ss.encode_update(delta, 1.0, segments, 1.0, scale, rng)
    masked = ss.mask_update(encoded, 0, segments, 1, os.urandom(32), {1: os.urandom(32)})
    truth = delta["blocks.0.w"]
    plain = encoded[0][:-1].view(np.int32).astype(np.float64)
    seen = masked[0][:-1].view(np.int32).astype(np.float64)
    assert np.corrcoef(plain, truth)[0, 1] > 0.999  # the encoding does carry the update ...
    assert abs(np.corrcoef(seen, truth)[0, 1]) < 0.03  # ... the masked upload does not
    counts = np.histogram(masked[0], bins=16, range=(0, 2**32))[0]
    assert counts.min() > 0.8 * size / 16  # spread uniformly over the modulus


def test_thin_segments_and_threshold():
    segments = ss.build_segments([["blocks.0.a", "head"], ["head"], ["blocks.0.a", "blocks.1.a", "head"]],
                                 {"blocks.0.a": 2, "blocks.1.a": 2, "head": 3}, ["blocks.0.a", "blocks.1.a", "head"])
    assert [(s.keys, s.holders) for s in segments] == [(("blocks.0.a",), (0, 2)), (("blocks.1.a",), (2,)), (("head",), (0, 1, 2))]
    assert [s.id for s in ss.thin_segments(segments, 2)] == [1]
    assert [s.id for s in ss.thin_segments(segments, 2, alive=[0, 1])] == [0]
    assert ss.threshold_for(0.5, 7) == 4 and ss.threshold_for(0.1, 3) == 2 and ss.threshold_for(1.0, 5) == 5


def test_clip_update_bounds_the_norm():
    delta = {"a": np.full(4, 3.0), "b": np.full(5, 4.0)}
    clipped = ss.clip_update(delta, 1.0)
    assert np.sqrt(sum((v ** 2).sum() for v in clipped.values())) == pytest.approx(1.0)
    assert ss.clip_update(delta, 0.0)["a"][0] == 3.0
