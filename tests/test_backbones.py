"""Backbones: timm names, generic configurations, local safetensors files, fingerprints, errors."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_VIT
from fedra_core import BackboneSpec, resolve_backbone
from fedra_core.backbones import create_skeleton, fingerprint_file


@pytest.mark.parametrize("name, family", [("vit_base_patch16_224", "vit"), ("mixer_b16_224", "mixer")])
def test_paper_backbones_build_on_meta_without_memory(name, family):
    model = create_skeleton(BackboneSpec(name=name, num_classes=100))
    assert len(model.blocks) == 12 and model.get_classifier().out_features == 100
    assert all(p.is_meta for p in model.parameters())


def test_user_checkpoint_with_imagenet_head_is_used_and_fingerprinted_without_head(tiny_vit, tmp_path):
    state = load_file(str(tiny_vit.path))
    state.update({"head.weight": torch.randn(1000, 32), "head.bias": torch.randn(1000)})  # a timm checkpoint
    path = tmp_path / "user.safetensors"
    save_file(state, str(path))
    user = resolve_backbone(BackboneSpec(name="vit", model_kwargs=TINY_VIT, weights=str(path), num_classes=10))
    assert user.fingerprint == tiny_vit.fingerprint  # same frozen weights, whatever the head
    state["blocks.3.mlp.fc1.weight"] = state["blocks.3.mlp.fc1.weight"] + 1e-3
    save_file(state, str(path))
    changed = resolve_backbone(BackboneSpec(name="vit", model_kwargs=TINY_VIT, weights=str(path), num_classes=10))
    assert changed.fingerprint != tiny_vit.fingerprint


def test_fingerprint_is_an_independent_sha256_of_names_shapes_and_bytes(tiny_vit):
    import hashlib

    state = load_file(str(tiny_vit.path))
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        assert t.dtype == torch.float32
        digest.update(f"{key}|F32|{tuple(t.shape)}|".encode() + t.numpy().tobytes())
    assert tiny_vit.fingerprint == digest.hexdigest()[:16]
    assert fingerprint_file(tiny_vit.path, list(state)) == tiny_vit.fingerprint


def test_hub_weights_offline_fail_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not download pre-trained weights for 'vit_tiny_patch16_224'.*local .safetensors"):
        resolve_backbone(BackboneSpec(name="vit_tiny_patch16_224", weights="hub"))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: s.pop("blocks.7.attn.qkv.weight"), "lacks tensor 'blocks.7.attn.qkv.weight'"),
        (lambda s: s.__setitem__("norm.weight", torch.ones(33)), r"'norm.weight' has shape \(33,\)"),
    ],
)
def test_file_that_does_not_match_the_model(tiny_vit, tmp_path, change, match):
    state = load_file(str(tiny_vit.path))
    change(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=match):
        resolve_backbone(BackboneSpec(name="vit", model_kwargs=TINY_VIT, weights=str(path)))


@pytest.mark.parametrize(
    "spec, match",
    [
        (BackboneSpec(name="nosuchnet"), "unknown backbone 'nosuchnet'"),
        (BackboneSpec(name="vit", model_kwargs=TINY_VIT, weights="/no/such.safetensors"), "does not exist"),
        (BackboneSpec(name="vit", model_kwargs=TINY_VIT, weights="w.bin"), "expected 'default', 'hub', 'random' or a .safetensors"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_backbone(spec)


def test_the_default_backbone_resolves_without_importing_the_demo_package():
    # explicit registration: the demo presets are listed in fedra_core.backbones, their weights
    # builder named by path and imported only when the weights are needed
    import subprocess
    import sys

    code = ("import sys; from fedra_core.backbones import BackboneSpec; "
            "name, family, kwargs = BackboneSpec(name='demo-vit', num_classes=10).constructor(); "
            "print(family.name, kwargs['embed_dim'], 'fedra_core.demo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["vit", "96", "False"]
