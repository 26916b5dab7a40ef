"""aggregate_fedra on a hand-worked example: 3 clients, 4 blocks, weighted and uniform, one unheld block."""

import numpy as np
import pytest
import torch

from fedra_core import aggregate_fedra

T = torch.tensor

GLOBAL = {
    "blocks.0.lora_A.weight": T([0.0, 0.0]),
    "blocks.1.lora_A.weight": T([0.0, 0.0]),
    "blocks.2.lora_A.weight": T([0.0, 0.0]),
    "blocks.3.lora_A.weight": T([7.0, 7.0]),
    "head.weight": T([1.0]),
}
# client 0 holds {0, 1}, client 1 holds {1, 2}, client 2 holds {0, 2}; nobody holds block 3
ALLOC = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0]], dtype=bool)
CLIENTS = [
    {"blocks.0.lora_A.weight": T([1.0, 2.0]), "blocks.1.lora_A.weight": T([3.0, 3.0]), "head.weight": T([3.0])},
    {"blocks.1.lora_A.weight": T([5.0, 1.0]), "blocks.2.lora_A.weight": T([2.0, 4.0]), "head.weight": T([6.0])},
    {"blocks.0.lora_A.weight": T([3.0, 0.0]), "blocks.2.lora_A.weight": T([8.0, 2.0]), "head.weight": T([9.0])},
]


def test_uniform_means_per_block():
    new = aggregate_fedra(GLOBAL, CLIENTS, ALLOC)
    # worked by hand: block 0 = mean(c0, c2), block 1 = mean(c0, c1), block 2 = mean(c1, c2)
    assert new["blocks.0.lora_A.weight"].tolist() == [2.0, 1.0]
    assert new["blocks.1.lora_A.weight"].tolist() == [4.0, 2.0]
    assert new["blocks.2.lora_A.weight"].tolist() == [5.0, 3.0]
    assert new["blocks.3.lora_A.weight"].tolist() == [7.0, 7.0]  # unheld: unchanged
    assert new["head.weight"].tolist() == [6.0]


def test_weighted_means_per_block():
    new = aggregate_fedra(GLOBAL, CLIENTS, ALLOC, weights=[1, 2, 3])
    # block 0: (1*[1,2] + 3*[3,0]) / 4 = [2.5, 0.5]; block 1: (1*[3,3] + 2*[5,1]) / 3 = [13/3, 5/3]
    # block 2: (2*[2,4] + 3*[8,2]) / 5 = [5.6, 2.8]; head: (3 + 12 + 27) / 6 = 7
    assert torch.allclose(new["blocks.0.lora_A.weight"], T([2.5, 0.5]))
    assert torch.allclose(new["blocks.1.lora_A.weight"], T([13 / 3, 5 / 3]))
    assert torch.allclose(new["blocks.2.lora_A.weight"], T([5.6, 2.8]))
    assert torch.allclose(new["head.weight"], T([7.0]))
    assert new["blocks.3.lora_A.weight"].tolist() == [7.0, 7.0]


def test_inputs_are_not_modified():
    before = {k: v.clone() for k, v in GLOBAL.items()}
    aggregate_fedra(GLOBAL, CLIENTS, ALLOC)
    assert all(torch.equal(before[k], GLOBAL[k]) for k in GLOBAL)


def test_key_of_unallocated_block_is_an_error():
    bad = [dict(CLIENTS[0], **{"blocks.3.lora_A.weight": T([1.0, 1.0])}), CLIENTS[1], CLIENTS[2]]
    with pytest.raises(ValueError, match="block 3, which it was not allocated"):
        aggregate_fedra(GLOBAL, bad, ALLOC)


@pytest.mark.parametrize(
    "clients, alloc, weights, match",
    [
        ([{"nope.weight": T([1.0])}, {}, {}], ALLOC, None, "'nope.weight'"),
        ([{"head.weight": T([1.0, 2.0])}, {}, {}], ALLOC, None, "shape"),
        (CLIENTS, ALLOC[:2], None, "allocation has shape"),
        (CLIENTS, ALLOC, [1, -1, 1], "weights"),
        (CLIENTS, ALLOC, [1, 1], "weights"),
    ],
)
def test_bad_input(clients, alloc, weights, match):
    with pytest.raises(ValueError, match=match):
        aggregate_fedra(GLOBAL, clients, alloc, weights)
