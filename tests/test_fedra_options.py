"""The corrected baselines and FedRA's options: the last-block allocation, ALLsmall as the k_min-block
model, prefix methods evaluated at the deepest held block, DepthFL's ramp over the run, and full-depth head calibration (against hand computations with
plain timm, and through the real apps)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from app_helpers import run_inprocess, train_messages
from conftest import TINY_VIT
from fedra_core import LoraSettings, ModelRecipe, get_method, trainable_state
from fedra_core.allocation import last_block_allocation
from fedra_core.calibration import calibrate_head
from fedra_core.run_config import load_run_config
from fedra_core.training import TrainSettings
from server_app.outputs import read_metrics


def _plain_model(backbone_path, state, depth: int) -> torch.nn.Module:
    """Plain timm ViT of the first ``depth`` blocks: frozen weights with every LoRA of ``state`` merged by
    hand (W + s B A; the patch embedding's conv adapter as B A reshaped) and the state's head."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **{**TINY_VIT, "depth": depth})
    weights = {k: v.clone() for k, v in load_file(str(backbone_path)).items()
               if not k.startswith("blocks.") or int(k.split(".")[1]) < depth}
    scale = LoraSettings().alpha / LoraSettings().rank
    for key, value in state.items():
        if key.startswith("blocks.") and int(key.split(".")[1]) >= depth:
            continue
        if key.endswith("lora_A.weight"):
            base = key.replace(".lora_A.weight", ".weight")
            b = state[key.replace("lora_A", "lora_B")]
            weights[base] = weights[base] + scale * (b.flatten(1) @ value.flatten(1)).view(weights[base].shape)
        elif "lora_" not in key:
            weights[key] = value
    model.load_state_dict(weights, strict=True)
    return model.eval()


def _random_global_state(backbone, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = ModelRecipe(backbone, LoraSettings(), get_method("fedra")).build(range(backbone.num_layers))
    return {k: v.clone() + 0.05 * torch.randn_like(v) for k, v in trainable_state(model).items()}


# --- allocation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("caps", [[12, 10, 8, 6, 4, 3], [3, 3, 3, 3], [1, 2, 5]])
def test_last_block_allocation_always_holds_the_last_block_and_covers_the_rest(caps):
    rng = np.random.default_rng(0)
    for _ in range(200):
        alloc = last_block_allocation(caps, 12, rng)
        assert alloc.sum(axis=1).tolist() == caps and alloc[:, 11].all()
        if sum(k - 1 for k in caps) >= 11:  # the other 11 blocks can all be held: they are
            assert alloc[:, :11].any(axis=0).all()


def test_last_block_allocation_draws_the_other_blocks_uniformly():
    rng = np.random.default_rng(1)
    counts = sum(last_block_allocation([4, 6], 12, rng)[0, :11].astype(int) for _ in range(4000))
    # client 0 holds 3 of the first 11 blocks: each with probability 3/11
    assert np.allclose(counts / 4000, 3 / 11, atol=0.03)


def test_unknown_allocation_and_calibration_of_another_method_are_one_line_config_errors():
    with pytest.raises(ValueError, match="allocation"):
        load_run_config({"allocation": "greedy"})
    with pytest.raises(ValueError, match="'head-calibration-steps' = 4 is an option of method 'fedra'; method 'depthfl' does not use it"):
        load_run_config({"method": "depthfl", "head-calibration-steps": 4})


# --- ALLsmall and DepthFL ---------------------------------------------------------------------------

def test_allsmall_global_model_has_the_smallest_capacity_depth():
    assert get_method("allsmall").model_blocks(12, [12, 6, 3]) == [0, 1, 2]
    assert get_method("fedra").model_blocks(12, [12, 6, 3]) == list(range(12))
    assert get_method("fedra").model_blocks(12, [6, 4, 3]) == list(range(12))  # FedRA trains every block anyway


@pytest.mark.parametrize("method", ["inclusivefl", "depthfl"])
def test_prefix_methods_global_model_ends_at_the_deepest_held_block(method):
    assert get_method(method).model_blocks(12, [12, 6, 3]) == list(range(12))
    assert get_method(method).model_blocks(12, [6, 6, 4, 3]) == [0, 1, 2, 3, 4, 5]  # nobody tunes blocks 6-11
    assert get_method(method).model_blocks(12, []) == list(range(12))


def test_depthfl_ramp_spans_the_run_by_default_and_follows_the_reference_when_asked():
    method = load_run_config({"method": "depthfl", "num-server-rounds": 10}).build_method()
    weights = [method.round_config(r)["distill-weight"] for r in (1, 5, 10)]
    assert weights == pytest.approx([math.exp(-5 * 0.9**2), math.exp(-5 * 0.5**2), 1.0])
    reference = load_run_config({"method": "depthfl", "num-server-rounds": 10, "depthfl-ramp-rounds": 500}).build_method()
    assert reference.round_config(10)["distill-weight"] == pytest.approx(math.exp(-5 * 0.98**2))  # 0.008
    with pytest.raises(ValueError, match="num_rounds"):
        get_method("depthfl").round_config(1)


@pytest.mark.slow
@pytest.mark.parametrize("method, capacities, depth", [("allsmall", "12,6,3", 3), ("inclusivefl", "6,4,3", 6)])
def test_small_and_prefix_global_models_are_evaluated_at_their_depth(tmp_path, method, capacities, depth):
    # ALLsmall: the k_min-block model; a prefix method where nobody holds all blocks: the deepest held prefix
    from fedra_core import resolve_backbone
    from fedra_core.data.federation import test_sets
    from server_app.checkpoint import load_checkpoint

    run_dir, grid, _ = run_inprocess(tmp_path, **{"method": method, "num-server-rounds": 1, "capacities": capacities})
    evals = [m for m in grid.sent if m.metadata.message_type == "evaluate"]
    assert evals and all(list(m.content["config"]["blocks"]) == list(range(depth)) for m in evals)
    cfg = load_run_config({**json.loads((run_dir / "config.json").read_text())})
    state = load_checkpoint(run_dir / "checkpoint.safetensors").global_state
    model = _plain_model(resolve_backbone(cfg.backbone_spec()).path, state, depth=depth)
    last = read_metrics(run_dir)[-1]
    for domain, data in test_sets(cfg.data_spec(), cfg.eval_max_examples).items():
        x, y = map(torch.stack, zip(*[data[i] for i in range(len(data))]))
        with torch.no_grad():
            correct = int((model(x).argmax(1) == y).sum())
        assert last["accuracy"][domain] == correct / len(y)


# --- head calibration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity", [12, 5])
def test_head_calibration_equals_head_training_on_the_plain_full_model(tiny_vit, capacity):
    state = _random_global_state(tiny_vit)
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 3, 28, 28, generator=gen), torch.randint(0, 10, (40,), generator=gen))
    settings = TrainSettings(lr=0.1, momentum=0.9, weight_decay=1e-4, clip_norm=10.0, batch_size=8)
    got = calibrate_head(ModelRecipe(tiny_vit, LoraSettings(), get_method("fedra")), state, data, capacity, settings, steps=3, seed=7)
    assert set(got) == {"head.weight", "head.bias"}  # the final norm is frozen by default

    # by hand: full-depth features of the plain model, a linear head trained with SGD (momentum, decay, clip)
    plain = _plain_model(tiny_vit.path, state, depth=12)
    w, b = state["head.weight"].clone().requires_grad_(), state["head.bias"].clone().requires_grad_()
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(7))
    for step, (x, y) in enumerate(loader):
        if step == 3:
            break
        with torch.no_grad():
            features = plain.forward_features(x)[:, 0]  # final norm, class token
        loss = F.cross_entropy(features @ w.T + b, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([w, b], 10.0)
        opt.step()
    assert torch.allclose(got["head.weight"], w.detach(), atol=1e-5)
    assert torch.allclose(got["head.bias"], b.detach(), atol=1e-5)
    assert not torch.allclose(got["head.weight"], state["head.weight"])


@pytest.mark.slow
def test_head_calibration_through_the_apps_sends_the_rest_read_only(tmp_path):
    run_dir, grid, replies = run_inprocess(tmp_path, **{"head-calibration-steps": 2, "num-server-rounds": 1})
    messages = train_messages(grid, 1)
    for message, (_, node_id, reply) in zip(messages, sorted(replies, key=lambda r: r[1])):
        own = set(message.content["arrays"].keys())
        blocks = {int(k.split(".")[1]) for k in own if k.startswith("blocks.")}
        if len(blocks) == 12:  # the full-depth client's head already trains on full-depth features
            assert "context" not in message.content and "t-calibrate" not in reply.content["metrics"]
            continue
        context = set(message.content["context"].keys())
        assert not own & context and {int(k.split(".")[1]) for k in context} == set(range(12)) - blocks
        assert set(reply.content["arrays"].keys()) == own  # the context is not sent back
        assert "t-calibrate" in reply.content["metrics"]
    record = read_metrics(run_dir)[-1]
    sent = [sum(len(a.data) for name in ("arrays", "context") if name in m.content for a in m.content[name].values())
            for m in messages]
    assert sorted(record["bytes-sent"].values()) == sorted(sent)
