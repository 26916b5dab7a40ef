"""Baselines on the engine: allocations, DepthFL exits and loss, InclusiveFL distillation, training."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedra_core import LoraSettings, ModelRecipe, TrainSettings, get_method
from fedra_core import evaluate, rows_to_blocks, train_local, trainable_state
from fedra_core.methods.depthfl import consistency_weight, exit_blocks, forward_outputs, mutual_distillation_loss
from fedra_core.methods.inclusivefl import momentum_distill

CAPS = [12, 6, 3]


@pytest.mark.parametrize(
    "name, rows",
    [
        ("alllarge", [list(range(12))] * 3),
        ("allsmall", [[0, 1, 2]] * 3),
        ("inclusivefl", [list(range(12)), list(range(6)), [0, 1, 2]]),
        ("depthfl", [list(range(12)), list(range(6)), [0, 1, 2]]),
    ],
)
def test_baseline_allocations(name, rows):
    assert rows_to_blocks(get_method(name).allocate(CAPS, 12, np.random.default_rng(0))) == rows


def test_fedra_allocation_is_random_with_capacities():
    alloc = get_method("fedra").allocate(CAPS, 12, np.random.default_rng(0))
    assert alloc.sum(axis=1).tolist() == CAPS
    assert rows_to_blocks(alloc)[1] != list(range(6))  # P(prefix) = 1 / C(12, 6)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'fedavg': allowed \\['fedra', 'alllarge', 'allsmall', 'inclusivefl', 'depthfl'"):
        get_method("fedavg")


def test_depthfl_exits_keys_and_outputs(tiny_vit):
    method = get_method("depthfl", {"depthfl-every": 3})
    assert exit_blocks(range(12), 3) == [2, 5, 8]
    assert exit_blocks(range(6), 3) == [2]
    model = ModelRecipe(tiny_vit, LoraSettings(), method).build(range(6))
    keys = list(trainable_state(model))
    assert {k.split(".")[1] for k in keys if k.startswith("exits.")} == {"2"}
    full_keys = list(trainable_state(ModelRecipe(tiny_vit, LoraSettings(), method).build(range(12))))
    assert sorted(method.client_keys(full_keys, list(range(6)))) == sorted(keys)
    x = torch.randn(2, 3, 28, 28)
    outs = forward_outputs(model, tiny_vit.family, x)
    assert len(outs) == 2 and torch.allclose(outs[-1], model(x), atol=1e-6)


def test_mutual_distillation_loss_by_hand():
    a = torch.tensor([[2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    pa, pb = torch.softmax(a, 1)[0], torch.softmax(b, 1)[0]
    ce = -math.log(pa[0]) - math.log(pb[0])
    kl_ab = float((pb * (pb / pa).log()).sum())  # KL(p_b || p_a): a learns from b
    kl_ba = float((pa * (pa / pb).log()).sum())
    got = mutual_distillation_loss([a, b], y, 0.5)
    assert math.isclose(float(got), ce + 0.5 * (kl_ab + kl_ba), rel_tol=1e-5)
    assert math.isclose(float(mutual_distillation_loss([a], y, 0.5)), -math.log(pa[0]), rel_tol=1e-6)


def test_consistency_weight_ramp():
    assert math.isclose(consistency_weight(0, 500), math.exp(-5))
    assert consistency_weight(500, 500) == 1.0 and consistency_weight(900, 500) == 1.0


def test_inclusivefl_distills_next_group_momentum_into_top_block():
    g = {f"blocks.{j}.a.lora_A.weight": torch.zeros(1) for j in range(4)}
    alloc = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=bool)
    deep = {k: torch.ones(1) for k in g}
    shallow = {"blocks.0.a.lora_A.weight": torch.tensor([2.0]), "blocks.1.a.lora_A.weight": torch.tensor([4.0])}
    momentum = {"blocks.2.a.lora_A.weight": torch.tensor([10.0]), "blocks.3.a.lora_A.weight": torch.tensor([20.0])}
    out = momentum_distill(g, [deep, shallow], alloc, momentum, beta=0.2)
    # shallow's top block 1: 0.8 * 4 + 0.2 * mean(10, 20) = 6.2; its block 0 and the deep client unchanged
    assert float(out[1]["blocks.1.a.lora_A.weight"]) == pytest.approx(6.2)
    assert float(out[1]["blocks.0.a.lora_A.weight"]) == 2.0
    assert all(torch.equal(out[0][k], deep[k]) for k in deep)
    assert momentum_distill(g, [deep, shallow], alloc, {}, 0.2)[1] == shallow  # first round: no momentum


def test_inclusivefl_momentum_over_two_rounds_by_hand():
    """The method keeps last round's aggregated block update as momentum and mixes it into the next
    round's shallow top block; its state_dict is that momentum (what the checkpoint keeps)."""
    method = get_method("inclusivefl", {"inclusivefl-beta": 0.5})
    key = "blocks.{}.attn.proj.lora_A.weight".format
    g0 = {key(j): torch.zeros(1) for j in range(3)}
    alloc = method.allocate([3, 1], 3, np.random.default_rng(0))  # prefixes: [0, 1, 2] and [0]
    deep = {key(0): torch.tensor([1.0]), key(1): torch.tensor([2.0]), key(2): torch.tensor([3.0])}
    shallow = {key(0): torch.tensor([5.0])}
    g1 = method.aggregate(g0, [deep, shallow], alloc, None)
    # round 1 (no momentum): block 0 = mean(1, 5) = 3, blocks 1, 2 from the deep client only
    assert [float(g1[key(j)]) for j in range(3)] == [3.0, 2.0, 3.0]
    assert {k: float(v) for k, v in method.state_dict().items()} == {key(0): 3.0, key(1): 2.0, key(2): 3.0}
    deep2 = {k: v + 1.0 for k, v in g1.items()}  # every block moves by +1
    shallow2 = {key(0): torch.tensor([7.0])}  # update +4 on its top block 0
    g2 = method.aggregate(g1, [deep2, shallow2], alloc, None)
    # shallow's top block 0 gets 0.5 * 4 + 0.5 * mean(momentum of blocks 1, 2 = 2, 3) = 3.25 -> 6.25;
    # block 0 = mean(4, 6.25) = 5.125
    assert float(g2[key(0)]) == pytest.approx(5.125)
    assert float(method.state_dict()[key(0)]) == pytest.approx(2.125)
    restored = get_method("inclusivefl", {"inclusivefl-beta": 0.5})
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.aggregate(g2, [g2, {key(0): g2[key(0)]}], alloc, None)[key(0)],
                       method.aggregate(g2, [g2, {key(0): g2[key(0)]}], alloc, None)[key(0)])


def test_depthfl_round_config_and_loss_reach_training(tiny_vit):
    """The distillation weight the server sends each round is the one the client's loss uses."""
    method = get_method("depthfl", {"depthfl-every": 3, "depthfl-ramp-rounds": 10})
    assert method.round_config(5) == {"distill-weight": pytest.approx(math.exp(-5 * 0.25))}
    model = ModelRecipe(tiny_vit, LoraSettings(dropout=0.0), method).build(range(6))
    x, y = torch.randn(4, 3, 28, 28), torch.tensor([0, 1, 2, 3])
    outs = [o.float() for o in forward_outputs(model, tiny_vit.family, x)]
    for w in (0.0, 0.7):
        expected = mutual_distillation_loss(outs, y, w)
        got = method.loss(model, tiny_vit.family, x, y, {"distill-weight": w})
        assert torch.allclose(got, expected)
    assert not torch.allclose(method.loss(model, tiny_vit.family, x, y, {"distill-weight": 0.0}),
                              method.loss(model, tiny_vit.family, x, y, {"distill-weight": 0.7}))


def test_training_reduces_loss_and_evaluate_counts(tiny_vit):
    torch.manual_seed(0)
    images = torch.randn(64, 3, 28, 28)
    labels = (images[:, 0].mean(dim=(1, 2)) > 0).long()
    data = TensorDataset(images, labels)
    model = ModelRecipe(tiny_vit, LoraSettings(), get_method("fedra")).build([0, 4, 8])
    before = evaluate(model, data)
    settings = TrainSettings(lr=0.05, batch_size=16, local_epochs=10)
    result = train_local(model, data, settings, seed=0)
    after = evaluate(model, data)
    assert result.steps == 40 and result.examples_seen == 640 and result.num_examples == 64
    assert after.loss < before.loss
    with torch.no_grad():
        manual = float((model(images).argmax(1) == labels).float().mean())
    assert after.accuracy == pytest.approx(manual)
    capped = train_local(model, data, TrainSettings(batch_size=16, max_steps=3), seed=1)
    assert capped.steps == 3
