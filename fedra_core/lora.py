"""LoRA adapters (peft) on any model family, their trainable state, and peft-format export.

Trainable state uses canonical keys: the module path plus ``lora_A.weight`` / ``lora_B.weight``
(peft's adapter name removed), and the family's trainable modules (``head.*``, ``norm.*`` for the
timm families). For timm models these are the names peft writes in ``adapter_model.safetensors``
minus its ``base_model.model.`` prefix; other families map them to their own names on export
(:meth:`ModelFamily.native_key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from safetensors.torch import save_file
from torch import nn

from fedra_core.backbones import Backbone
from fedra_core.families import ModelFamily
from fedra_core.state import State

if TYPE_CHECKING:
    from peft import LoraConfig

ADAPTER = "default"
PEFT_PREFIX = "base_model.model."
MANIFEST_NAME = "manifest.json"  # sha256 of every file of an exported adapter


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters; ``targets`` None means the family default (reference settings).

    ``train_norm``: the final norm trains (and travels) with the head; off by default, as in the
    reference code, where it is sent and averaged but frozen.
    """

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.1
    targets: tuple[str, ...] | None = None
    train_norm: bool = False

    def target_modules(self, family: ModelFamily) -> list[str]:
        """Return the LoRA target module suffixes: the settings' own, else the family default."""
        return list(self.targets or family.lora_targets)

    def trainable_modules(self, family: ModelFamily) -> tuple[str, ...]:
        """Return the top-level modules that train besides the adapters: the family's, less ``norm``
        unless ``train_norm``."""
        return tuple(m for m in family.trainable_modules if self.train_norm or m != "norm")

    def config(self, family: ModelFamily, modules_to_save: list[str] | None = None, native: bool = False) -> "LoraConfig":
        """Return the peft ``LoraConfig`` for a model family (with the family's own module names
        when ``native``, as an exported adapter needs them)."""
        from peft import LoraConfig  # peft (and the transformers it imports) only where adapters are made

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=[family.native_target(t) if native else t for t in self.target_modules(family)],
            bias="none",
            modules_to_save=modules_to_save,
        )


def add_lora(model: nn.Module, family: ModelFamily, settings: LoraSettings) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place and set what trains.

    Only the adapters and the trainable modules (head, and the final norm with ``train_norm``) require gradients
    afterwards. Returns the model. Raises ValueError when no module matches the targets.
    """
    from peft import inject_adapter_in_model

    targets = settings.target_modules(family)
    was_training = model.training
    try:
        inject_adapter_in_model(settings.config(family), model, adapter_name=ADAPTER)
    except ValueError as exc:
        raise ValueError(f"LoRA targets {targets} match no module of this {family.name} model: {exc}") from exc
    modules = settings.trainable_modules(family)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or name.split(".")[0] in modules)
    return model.train(was_training)  # injected dropout layers start in training mode


def canonical_key(name: str) -> str:
    """Map a parameter name of an adapted model to its canonical state key (drop the adapter name)."""
    return name.replace(f".{ADAPTER}.", ".")


def trainable_state(model: nn.Module) -> State:
    """Return the trainable parameters of ``model`` (detached, on their device) by canonical key."""
    return {canonical_key(n): p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the trainable parameters of ``model`` in place.

    The keys must be exactly the model's trainable keys; raises ValueError naming the first key
    missing or unexpected, or a shape mismatch.
    """
    params = {canonical_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise ValueError(f"trainable state mismatch: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for key, param in params.items():
            value = state[key]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{key!r} has shape {tuple(value.shape)}, the model expects {tuple(param.shape)}")
            param.copy_(value.to(param.device, param.dtype))


def backbone_recipe(backbone: Backbone) -> dict:
    """Return what a plain library needs to rebuild the frozen model (the content of ``backbone.json``).

    The family's own entries (for timm: ``timm_name``, a registry name for ``timm.create_model``, or
    ``timm_class`` for presets and generic shapes), the full ``model_kwargs`` and ``num_classes``.
    ``weights`` is ``"hub"`` (with ``pretrained`` true: the library downloads them) or the weights
    file's name; ``weights_path`` and ``weights_sha256`` name the local file the server used and its
    sha256 (streamed). Also the backbone's fingerprint, family, project backbone name and timm version.
    """
    spec = backbone.spec
    registry_name, family, kwargs = spec.constructor()
    hub = registry_name is not None and spec.weights in ("hub", "default") and family.local_weights(registry_name) is None
    digest = hashlib.sha256()
    with open(backbone.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "name": spec.name,
        "family": family.name,
        **family.recipe(registry_name, kwargs),
        "model_kwargs": kwargs,
        "num_classes": spec.num_classes,
        "pretrained": hub,
        "weights": "hub" if hub else Path(backbone.path).name,
        "weights_path": str(backbone.path),
        "weights_sha256": digest.hexdigest(),
        "fingerprint": backbone.fingerprint,
        "timm_version": timm.__version__,
    }


def export_peft_adapter(state: Mapping[str, torch.Tensor], backbone: Backbone, settings: LoraSettings, out_dir: Path) -> Path:
    """Write a global trainable state as a peft adapter folder loadable by ``PeftModel.from_pretrained``.

    Writes ``adapter_config.json`` (LoRA settings, the family's trainable modules as
    ``modules_to_save``), ``adapter_model.safetensors`` (keys in the family's own names) and
    ``backbone.json`` (how to rebuild the frozen model) and ``manifest.json`` (the sha256 of each of
    those files). Keys that are not part of the plain model (DepthFL exits) are left out. Raises
    ValueError for a NaN or infinite value (nothing is written then). Returns ``out_dir``.
    """
    family = backbone.family
    trained = settings.trainable_modules(family)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        PEFT_PREFIX + family.native_key(k): v.detach().contiguous().cpu()
        for k, v in state.items()
        if "lora_" in k or k.split(".")[0] in trained
    }
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ValueError(f"the adapter to export holds NaN or infinite values in {bad!r}; nothing was written to {out_dir}")
    modules = [family.native_key(m) for m in trained]
    config = settings.config(family, modules_to_save=modules, native=True)
    config.save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out_dir / "backbone.json").write_text(json.dumps(backbone_recipe(backbone), indent=2))
    files = ("adapter_config.json", "adapter_model.safetensors", "backbone.json")
    manifest = {name: hashlib.sha256((out_dir / name).read_bytes()).hexdigest() for name in files}
    (out_dir / MANIFEST_NAME).write_text(json.dumps({"sha256": manifest}, indent=2))
    return out_dir


def verify_adapter(out_dir: Path) -> None:
    """Check the files of an exported adapter folder against its ``manifest.json``; raise ValueError
    naming the first file that is missing or differs."""
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text())["sha256"]
    for name, expected in manifest.items():
        path = out_dir / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise ValueError(f"{path} does not match {out_dir / MANIFEST_NAME} (missing or changed after export)")
