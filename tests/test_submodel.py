"""Sub-models: logits equal a reference forward that skips unheld blocks, lazy reads, global keys, bytes."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fedra_core import LoraSettings, build_submodel, trainable_state
from fedra_core.backbones import create_skeleton
from fedra_core.lora import add_lora, export_peft_adapter, load_trainable_state

X = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))


def full_reference_model(backbone):
    """The whole timm model with every weight loaded straight from the file (head zeroed)."""
    model = create_skeleton(backbone.spec, device="cpu")
    state = load_file(str(backbone.path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected
    return model.eval()


def reference_forward(model, x, blocks):
    """Forward through the full model applying only ``blocks`` (written out from timm's structure)."""
    if hasattr(model, "stem"):  # Mixer
        h = model.stem(x)
        for j in blocks:
            h = model.blocks[j](h)
        return model.head(model.norm(h).mean(dim=1))
    h = model.patch_embed(x)
    h = torch.cat([model.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + model.pos_embed
    for j in blocks:
        h = model.blocks[j](h)
    return model.head(model.norm(h)[:, 0])


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_mixer"])
@pytest.mark.parametrize("blocks", [[0, 5, 11], [2, 3, 4, 9], list(range(12))])
def test_submodel_matches_reference_forward(request, name, blocks):
    backbone = request.getfixturevalue(name)
    sub = add_lora(build_submodel(backbone, blocks), backbone.family, LoraSettings())
    ref = full_reference_model(backbone)
    with torch.no_grad():
        ref.head.weight.copy_(sub.head.weight)
        ref.head.bias.copy_(sub.head.bias)
        expected = reference_forward(ref, X, blocks)
        got = sub(X)
    assert torch.allclose(got, expected, atol=1e-5)
    if len(blocks) == 12:
        assert torch.allclose(got, ref(X), atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_mixer"])
def test_trained_lora_moves_with_its_global_block(request, name):
    """LoRA weights of block 7 at local position 1 act exactly as on block 7 of the full model."""
    backbone = request.getfixturevalue(name)
    sub = add_lora(build_submodel(backbone, [3, 7]), backbone.family, LoraSettings(dropout=0.0))
    full = add_lora(build_submodel(backbone, range(12)), backbone.family, LoraSettings(dropout=0.0))
    state = {k: torch.randn_like(v) * 0.05 for k, v in trainable_state(sub).items()}
    load_trainable_state(sub, state)
    full_state = {k: v.clone() for k, v in trainable_state(full).items()}
    full_state.update(state)
    load_trainable_state(full, full_state)
    with torch.no_grad():
        # the adapted full model run only through blocks 3 and 7 (blocks are called directly)
        expected = reference_forward(full, X, [3, 7])
        assert torch.allclose(sub(X), expected, atol=1e-5)


def test_keys_are_global_and_bytes_match_analytic_count(tiny_vit):
    blocks = [1, 6, 10]
    sub = add_lora(build_submodel(tiny_vit, blocks), tiny_vit.family, LoraSettings(rank=8))
    state = trainable_state(sub)
    d, r, c, p, ch = 32, 8, 10, 7, 3
    expected_keys = {
        f"blocks.{j}.{m}.lora_{ab}.weight" for j in blocks for m in ("attn.proj", "mlp.fc2") for ab in "AB"
    } | {"patch_embed.proj.lora_A.weight", "patch_embed.proj.lora_B.weight", "head.weight", "head.bias"}
    assert set(state) == expected_keys  # the final norm is frozen (reference settings)
    # attn.proj: A r x d + B d x r; mlp.fc2: A r x 4d + B d x r; patch embedding (conv p x p on ch
    # channels): A r x ch x p x p + B d x r; head c x d + c
    per_block = (r * d + d * r) + (r * 4 * d + d * r)
    analytic = 4 * (len(blocks) * per_block + r * ch * p * p + d * r + c * d + c)
    assert sum(t.numel() * t.element_size() for t in state.values()) == analytic
    assert tuple(state["patch_embed.proj.lora_A.weight"].shape) == (r, ch, p, p)


def test_legacy_targets_and_trained_norm(tiny_vit):
    settings = LoraSettings(rank=8, targets=("attn.proj", "mlp.fc2"), train_norm=True)
    state = trainable_state(add_lora(build_submodel(tiny_vit, [3]), tiny_vit.family, settings))
    assert set(state) == {f"blocks.3.{m}.lora_{ab}.weight" for m in ("attn.proj", "mlp.fc2") for ab in "AB"} | {
        "norm.weight", "norm.bias", "head.weight", "head.bias"}


def test_lazy_reads_touch_only_held_blocks(tiny_vit, tensors_read):
    read = tensors_read
    held = [2, 5, 9]
    model = build_submodel(tiny_vit, held)
    read_blocks = {int(k.split(".")[1]) for k in read if k.startswith("blocks.")}
    assert read_blocks == set(held)
    all_keys = load_file(str(tiny_vit.path)).keys()
    assert set(read) == {k for k in all_keys if not k.startswith("blocks.") or int(k.split(".")[1]) in held}
    block_bytes = sum(p.numel() * p.element_size() for p in model.blocks.parameters())
    full_block_bytes = sum(
        v.numel() * v.element_size() for k, v in load_file(str(tiny_vit.path)).items() if k.startswith("blocks.")
    )
    assert block_bytes * 4 == full_block_bytes  # 3 of 12 blocks: exactly a quarter


@pytest.mark.parametrize("blocks", [[], [0, 0], [12], [-1]])
def test_bad_block_indices(tiny_vit, blocks):
    with pytest.raises(ValueError, match="block indices"):
        build_submodel(tiny_vit, blocks)


@pytest.mark.slow
def test_exported_adapter_loads_with_plain_timm_and_peft(tiny_vit, tmp_path):
    """A fresh process builds the timm model, loads the adapter with PeftModel.from_pretrained and
    reproduces the logits of our adapted model."""
    model = add_lora(build_submodel(tiny_vit, range(12)), tiny_vit.family, LoraSettings())
    state = {k: torch.randn_like(v) * 0.05 for k, v in trainable_state(model).items()}
    load_trainable_state(model, state)
    export_peft_adapter(state, tiny_vit, LoraSettings(), tmp_path / "adapter")
    with torch.no_grad():
        expected = model(X)
    torch.save(X, tmp_path / "x.pt")
    script = f"""
import json, sys, timm, torch
from peft import PeftModel
from safetensors.torch import load_file
meta = json.load(open({str(tmp_path / 'adapter' / 'backbone.json')!r}))
model = timm.create_model("vit_tiny_patch16_224", num_classes=meta["num_classes"], **meta["model_kwargs"])
print(model.load_state_dict(load_file(meta["weights_path"]), strict=False))
model = PeftModel.from_pretrained(model, {str(tmp_path / 'adapter')!r}).eval()
x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
with torch.no_grad():
    torch.save(model(x), {str(tmp_path / 'y.pt')!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    got = torch.load(tmp_path / "y.pt", weights_only=True)
    assert torch.allclose(got, expected, atol=1e-5)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 8
