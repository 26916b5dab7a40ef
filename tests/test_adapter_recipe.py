"""The exported adapter is self-sufficient: the README's loading recipe, run as written in a fresh
process with only timm, peft and safetensors, rebuilds the global model from ``backbone.json`` (the
full constructor arguments and the weights file or hub source) for the demo presets, a generic ViT
shape and a timm registry model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fedra_core import BackboneSpec, LoraSettings, ModelRecipe, get_method, resolve_backbone, trainable_state
from fedra_core.backbones import Backbone
from fedra_core.lora import export_peft_adapter, load_trainable_state

REPO = Path(__file__).resolve().parent.parent
SECTION = "### Loading the tuned model without this project's server"
ADAPTER_IN_README = 'Path("runs/demo/adapter")'
REGISTRY = dict(name="vit_tiny_patch16_224", model_kwargs=dict(img_size=28, patch_size=7), num_classes=10)
# Stands in for timm's download in the hub case: the "pre-trained" weights are the given local file.
FAKE_HUB = """import timm.models._builder as _builder
from safetensors.torch import load_file as _load
def _from_file(model, *args, **kwargs):
    model.load_state_dict(_load({path!r}), strict=False)
_builder.load_pretrained = _from_file
"""


def readme_recipe() -> str:
    """Return the python block of the README section on loading the tuned model, verbatim."""
    section = (REPO / "README.md").read_text().split(SECTION + "\n", 1)[1]
    before, block = section.split("```python\n", 1)
    assert re.search(r"^#{1,6} ", before, re.M) is None, "the recipe must be in its own section"
    return block.split("```", 1)[0]


def tuned_model(backbone: Backbone) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Return the project's full model of ``backbone`` with a non-zero trainable state, and that state."""
    torch.manual_seed(3)
    model = ModelRecipe(backbone, LoraSettings(), get_method("fedra")).build(range(backbone.num_layers))
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in trainable_state(model).items()}  # LoRA B non-zero
    load_trainable_state(model, state)
    return model.eval(), state


def run_recipe(adapter: Path, tmp_path: Path, images: torch.Tensor | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """Run the README recipe for ``adapter`` in a fresh process; with ``images``, save its logits to out.safetensors."""
    script = readme_recipe()
    assert ADAPTER_IN_README in script
    script = prelude + script.replace(ADAPTER_IN_README, f"Path({str(adapter)!r})")
    if images is not None:
        save_file({"x": images}, str(tmp_path / "x.safetensors"))
        script += (
            "import torch\n"
            "from safetensors.torch import save_file\n"
            f"x = load_file({str(tmp_path / 'x.safetensors')!r})['x']\n"
            "with torch.no_grad():\n"
            f"    save_file({{'logits': model(x).contiguous()}}, {str(tmp_path / 'out.safetensors')!r})\n"
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)


def sha256_of(path: Path) -> str:
    """Return the sha256 (hex) of a whole file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["demo-vit", "demo-mixer", "generic-vit", "registry", "hub"])
def test_readme_recipe_rebuilds_the_global_model_in_a_fresh_process(tmp_path, tiny_vit, case):
    if case == "generic-vit":
        backbone = tiny_vit
    elif case in ("registry", "hub"):
        backbone = resolve_backbone(BackboneSpec(**REGISTRY, weights="random"))
    else:
        backbone = resolve_backbone(BackboneSpec(name=case, weights="random", num_classes=10))
    model, state = tuned_model(backbone)
    prelude = ""
    if case == "hub":  # as if the server had downloaded these weights from the hub
        backbone = dataclasses.replace(backbone, spec=dataclasses.replace(backbone.spec, weights="hub"))
        prelude = FAKE_HUB.format(path=str(backbone.path))
    adapter = export_peft_adapter(state, backbone, LoraSettings(), tmp_path / "adapter")
    meta = json.loads((adapter / "backbone.json").read_text())
    assert meta["weights_sha256"] == sha256_of(backbone.path)
    assert meta["fingerprint"] == backbone.fingerprint and meta["num_classes"] == 10
    assert meta["model_kwargs"]["img_size"] == 28
    if case == "hub":
        assert meta["weights"] == "hub" and meta["pretrained"] is True
    else:
        assert meta["weights"] == backbone.path.name and meta["pretrained"] is False
        # the server's path is gone on the user's machine: the weights file travels next to the adapter
        shutil.copy(backbone.path, adapter / meta["weights"])
        meta["weights_path"] = str(tmp_path / "elsewhere" / meta["weights"])
        (adapter / "backbone.json").write_text(json.dumps(meta))
    images = torch.randn(6, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    out = run_recipe(adapter, tmp_path, images, prelude)
    assert out.returncode == 0, out.stderr[-3000:]
    with torch.no_grad():
        expected = model(images)
    got = load_file(str(tmp_path / "out.safetensors"))["logits"]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_demo_presets_record_their_full_constructor_arguments(tmp_path):
    backbone = resolve_backbone(BackboneSpec(name="demo-mixer", weights="random", num_classes=10))
    meta = json.loads((export_peft_adapter({}, backbone, LoraSettings(), tmp_path) / "backbone.json").read_text())
    assert meta["timm_name"] is None and meta["timm_class"] == "MlpMixer"
    assert meta["model_kwargs"] == dict(img_size=28, patch_size=7, in_chans=3, embed_dim=96, num_blocks=12, mlp_ratio=[0.5, 4.0])


@pytest.mark.slow
def test_the_recipe_finds_the_weights_at_the_recorded_path_and_refuses_a_file_that_is_not_the_runs(tmp_path, tiny_vit):
    model, state = tuned_model(tiny_vit)
    adapter = export_peft_adapter(state, tiny_vit, LoraSettings(), tmp_path / "adapter")
    meta = json.loads((adapter / "backbone.json").read_text())
    assert meta["weights_path"] == str(tiny_vit.path)
    assert run_recipe(adapter, tmp_path).returncode == 0  # nothing next to the adapter: the server's path
    tensors = load_file(str(tiny_vit.path))
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(adapter / meta["weights"]))
    out = run_recipe(adapter, tmp_path)
    assert out.returncode != 0 and "is not the run's backbone" in out.stderr
