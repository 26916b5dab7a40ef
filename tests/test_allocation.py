"""Allocation policies: row sums, uniform block frequencies, coverage, and input errors."""

import numpy as np
import pytest

from fedra_core.allocation import full_allocation, prefix_allocation, random_allocation, rows_to_blocks


def sample_allocation(caps, layers, rng, policy="random"):
    """The four allocations the methods draw, by name."""
    if policy == "prefix":
        return prefix_allocation(caps, layers)
    if policy == "full":
        return full_allocation(caps, layers)
    return random_allocation(caps, layers, rng, cover=policy == "random-cover")

CAPS = [12, 10, 8, 6, 4, 3]


@pytest.mark.parametrize("policy", ["random", "random-cover", "prefix", "full"])
def test_rows_hold_their_capacity(policy):
    rng = np.random.default_rng(0)
    alloc = sample_allocation(CAPS, 12, rng, policy)
    assert alloc.dtype == bool and alloc.shape == (6, 12)
    expected = [12] * 6 if policy == "full" else CAPS
    assert alloc.sum(axis=1).tolist() == expected


@pytest.mark.parametrize("policy", ["random", "random-cover"])
def test_block_frequency_is_k_over_L(policy):
    rng = np.random.default_rng(1)
    caps = [3, 6, 4]
    draws = 4000
    counts = np.zeros((3, 12))
    for _ in range(draws):
        counts += sample_allocation(caps, 12, rng, policy)
    freq = counts / draws
    expected = np.array(caps)[:, None] / 12
    # binomial standard error is at most sqrt(0.25/4000) = 0.0079; allow 5 of them
    assert np.abs(freq - expected).max() < 0.04


def test_random_draws_change_every_call_and_seed_reproduces():
    a = [sample_allocation(CAPS, 12, np.random.default_rng(5)) for _ in range(2)]
    assert (a[0] == a[1]).all()
    rng = np.random.default_rng(5)
    b1, b2 = sample_allocation(CAPS, 12, rng), sample_allocation(CAPS, 12, rng)
    assert not (b1 == b2).all()


@pytest.mark.parametrize("caps", [[3, 3, 3, 3], [4, 4, 4], [2, 5, 5], [1, 1, 10], [3, 3, 3, 3, 3, 3]])
def test_random_cover_covers_whenever_possible(caps):
    rng = np.random.default_rng(2)
    for _ in range(300):
        alloc = sample_allocation(caps, 12, rng, "random-cover")
        assert alloc.any(axis=0).all()
        assert alloc.sum(axis=1).tolist() == caps


def test_random_cover_spreads_blocks_when_it_cannot_cover():
    rng = np.random.default_rng(3)
    for _ in range(100):
        alloc = sample_allocation([2, 3, 4], 12, rng, "random-cover")
        assert alloc.sum(axis=0).max() == 1  # no block twice while others are unheld


def test_plain_random_does_not_always_cover():
    rng = np.random.default_rng(4)
    covered = [sample_allocation([3, 3, 3, 3], 12, rng).any(axis=0).all() for _ in range(200)]
    assert not all(covered)  # P(cover) for 4 x 3-of-12 is 369600/220^4 ~ 0.016


def test_prefix_and_dynamic_capacities():
    rng = np.random.default_rng(0)
    assert rows_to_blocks(sample_allocation([2, 4], 6, rng, "prefix")) == [[0, 1], [0, 1, 2, 3]]
    # capacities may change from one call to the next
    assert sample_allocation([5, 1], 6, rng).sum(axis=1).tolist() == [5, 1]


@pytest.mark.parametrize(
    "caps, layers, policy, match",
    [
        ([0, 3], 12, "random", "capacity 0"),
        ([13], 12, "random", "capacity 13"),
        ([2.5], 12, "random", "capacity 2.5"),
        ([], 12, "random", "empty"),
        ([3], 0, "random", "num_layers=0"),
    ],
)
def test_invalid_input_names_the_value(caps, layers, policy, match):
    with pytest.raises(ValueError, match=match):
        sample_allocation(caps, layers, np.random.default_rng(0), policy)
