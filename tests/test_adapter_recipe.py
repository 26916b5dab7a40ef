"""The exported adapter is self-sufficient: the README's loading recipe, run as written in a fresh
process with only timm, peft and safetensors, rebuilds the global model of the demo ViT and Mixer
presets (their full constructor arguments and weights file come from ``backbone.json``)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedra_core import BackboneSpec, LoraSettings, MethodSettings, build_trainable_model, resolve_backbone, trainable_state
from fedra_core.lora import export_peft_adapter, load_trainable_state

REPO = Path(__file__).resolve().parent.parent


def readme_recipe() -> str:
    """The python block of the README section on loading the tuned model without this project."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Loading the tuned model without this project's server", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("preset", ["demo-vit", "demo-mixer"])
def test_readme_recipe_rebuilds_the_global_model_in_a_fresh_process(tmp_path, preset):
    backbone = resolve_backbone(BackboneSpec(name=preset, weights="random", num_classes=10))
    torch.manual_seed(3)
    model = build_trainable_model(backbone, range(backbone.num_layers), LoraSettings(), MethodSettings())
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in trainable_state(model).items()}  # LoRA B non-zero
    load_trainable_state(model, state)
    adapter = export_peft_adapter(state, backbone, LoraSettings(), tmp_path / "adapter")
    meta = json.loads((adapter / "backbone.json").read_text())
    assert meta["weights_sha256"] == hashlib.sha256(backbone.path.read_bytes()).hexdigest()
    assert meta["model_kwargs"]["embed_dim"] == 96 and meta["model_kwargs"]["img_size"] == 28
    # the server's path is gone on the user's machine: the weights file travels next to the adapter
    shutil.copy(backbone.path, adapter / meta["weights"])
    meta["weights_path"] = str(tmp_path / "elsewhere" / meta["weights"])
    (adapter / "backbone.json").write_text(json.dumps(meta))
    images = torch.randn(6, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    save_file({"x": images}, str(tmp_path / "x.safetensors"))
    script = readme_recipe().replace('Path("runs/demo/adapter")', f"Path({str(adapter)!r})") + (
        "import torch\n"
        "from safetensors.torch import save_file\n"
        f"x = load_file({str(tmp_path / 'x.safetensors')!r})['x']\n"
        "with torch.no_grad():\n"
        f"    save_file({{'logits': model(x).contiguous()}}, {str(tmp_path / 'out.safetensors')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path)
    with torch.no_grad():
        expected = model.eval()(images)
    got = load_file(str(tmp_path / "out.safetensors"))["logits"]
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_the_recipe_refuses_a_weights_file_that_is_not_the_runs(tmp_path):
    backbone = resolve_backbone(BackboneSpec(name="demo-vit", weights="random", num_classes=10))
    model = build_trainable_model(backbone, range(backbone.num_layers), LoraSettings(), MethodSettings())
    adapter = export_peft_adapter(trainable_state(model), backbone, LoraSettings(), tmp_path / "adapter")
    meta = json.loads((adapter / "backbone.json").read_text())
    tensors = load_file(str(backbone.path))
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(adapter / meta["weights"]))
    script = readme_recipe().replace('Path("runs/demo/adapter")', f"Path({str(adapter)!r})")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "is not the run's backbone" in out.stderr
