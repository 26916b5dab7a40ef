"""Tests of the skipped-block-robust demo backbones (fedra_core.demo.backbone)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fedra_core.backbones import (
    FINGERPRINT_KEY,
    BackboneSpec,
    create_skeleton,
    fingerprint_file,
    resolve_backbone,
)
from fedra_core.demo.backbone import (
    build_demo_backbone,
    demo_backbone_file,
    forward_blocks,
    random_blocks,
    subset_accuracy,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache of this module's own for the backbone builds, holding a copy of the session cache's
    digits benchmark (the pre-training data: built once per session, not again here)."""
    from fedra_core.data.digits import build_digits

    digits = build_digits(0)
    root = tmp_path_factory.mktemp("fedra_cache")
    (root / digits.parent.name).mkdir()
    shutil.copyfile(digits, root / digits.parent.name / digits.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDRA_CACHE", str(root))
        yield root


@pytest.mark.parametrize("name", ["demo-vit", "demo-mixer"])
def test_full_depth_forward_equals_model(name: str) -> None:
    torch.manual_seed(0)
    model = create_skeleton(BackboneSpec(name=name, num_classes=10), device="cpu").eval()
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(forward_blocks(model, x, list(range(12))), expected, atol=1e-5)
        assert torch.allclose(forward_blocks(model, x), expected, atol=1e-5)
        assert forward_blocks(model, x, [0, 5, 11]).shape == (4, 10)


def test_random_blocks() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 3, 12):
        blocks = random_blocks(12, k, rng)
        assert len(set(blocks)) == k and blocks == sorted(blocks) and 0 <= blocks[0] and blocks[-1] < 12
    with pytest.raises(ValueError, match="k=13"):
        random_blocks(12, 13, rng)


def test_subset_accuracy_on_tiny_set() -> None:
    torch.manual_seed(0)
    model = create_skeleton(BackboneSpec(name="demo-vit", num_classes=10), device="cpu")
    data = torch.utils.data.TensorDataset(torch.randn(20, 3, 28, 28), torch.randint(0, 10, (20,)))
    model.train()
    acc = subset_accuracy(model, data, 3, 2, np.random.default_rng(0))
    assert model.training  # the mode is restored
    # by hand: the same two draws of 3 blocks, each run in order after timm's own embedding
    rng, x, y = np.random.default_rng(0), data.tensors[0], data.tensors[1]
    model.eval()
    accs = []
    with torch.no_grad():
        for _ in range(2):
            blocks = sorted(rng.choice(12, size=3, replace=False).tolist())
            h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
            for j in blocks:
                h = model.blocks[j](h)
            accs.append(float((model.forward_head(model.norm(h)).argmax(1) == y).float().mean()))
    assert acc == pytest.approx(sum(accs) / 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo-vit", "demo-mixer"])
def test_tiny_build_is_cached_without_head(cache: Path, name: str) -> None:
    path = demo_backbone_file(name, steps=3, eval_images=200)
    assert path == cache / "backbones" / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and not [k for k in keys if k.startswith("head.")]
    assert meta[FINGERPRINT_KEY] == fingerprint_file(path, keys)
    assert meta["demo_steps"] == "3"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["fingerprint"] == meta[FINGERPRINT_KEY] and set(sidecar) >= {"acc_k3", "acc_k6", "acc_k12"}
    assert float(meta["demo_acc_k3"]) == pytest.approx(float(sidecar["acc_k3"]))

    mtime = path.stat().st_mtime_ns
    assert demo_backbone_file(name) == path
    assert path.stat().st_mtime_ns == mtime
    # the backbone registry resolves the demo preset to this very file
    backbone = resolve_backbone(BackboneSpec(name=name))
    assert backbone.path == path and backbone.fingerprint == meta[FINGERPRINT_KEY] and backbone.num_layers == 12


def test_bad_names(cache: Path) -> None:
    with pytest.raises(ValueError, match="'demo-cnn'"):
        demo_backbone_file("demo-cnn")
    with pytest.raises(ValueError, match="'demo-cnn'"):
        build_demo_backbone("demo-cnn", steps=1)
