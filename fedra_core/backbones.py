"""Backbones: which timm model to build, where its frozen weights live, and their fingerprint.

A backbone is described by a :class:`BackboneSpec` (a timm model name or a demo preset, optional
constructor overrides, a weights source). :func:`resolve_backbone` turns it into a
:class:`Backbone`: a local safetensors file holding the frozen weights, the fingerprint of those
weights and the model family. Every later step (sub-models, evaluation, export) reads weights from
that file only, so the hub, a user's checkpoint and the demo backbones all take the same path.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

Family = Literal["vit", "mixer"]

# Small 12-block backbones for the offline demo: 28x28 RGB input, 7x7 patches (16 tokens).
DEMO_PRESETS: dict[str, tuple[Family, dict[str, Any]]] = {
    "demo-vit": (
        "vit",
        dict(img_size=28, patch_size=7, in_chans=3, embed_dim=96, depth=12, num_heads=3, mlp_ratio=4.0),
    ),
    "demo-mixer": (
        "mixer",
        dict(img_size=28, patch_size=7, in_chans=3, embed_dim=96, num_blocks=12, mlp_ratio=(0.5, 4.0)),
    ),
}
# Generic constructors: "vit" / "mixer" plus constructor arguments give any ViT / Mixer shape.
GENERIC_FAMILIES: dict[str, Family] = {"vit": "vit", "mixer": "mixer"}

HEAD_PREFIX = "head."
FINGERPRINT_KEY = "fedra_fingerprint"


def cache_dir() -> Path:
    """Return the project's cache folder (``$FEDRA_CACHE`` or ``~/.cache/fedra``), created if needed."""
    root = Path(os.environ.get("FEDRA_CACHE", Path.home() / ".cache" / "fedra")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class BackboneSpec:
    """What backbone to use.

    name: a timm model name (``vit_base_patch16_224``, ``mixer_b16_224``, ...), a demo preset
        (``demo-vit``, ``demo-mixer``) or a generic family (``vit``, ``mixer``) built from ``model_kwargs``.
    model_kwargs: constructor overrides passed to timm (``depth``, ``embed_dim``, ``img_size``, ...).
    weights: ``"default"`` (hub weights for timm names, the cached pre-trained file for demo presets),
        ``"hub"``, ``"random"`` (seeded initialisation, for tests and benchmarks) or a path to a
        ``.safetensors`` file with timm's parameter names.
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

    def constructor(self) -> tuple[str | None, Family | None, dict[str, Any]]:
        """Return (timm name or None, family for direct construction or None, kwargs)."""
        if self.name in DEMO_PRESETS:
            family, kwargs = DEMO_PRESETS[self.name]
            return None, family, {**kwargs, **self.model_kwargs}
        if self.name in GENERIC_FAMILIES:
            return None, GENERIC_FAMILIES[self.name], dict(self.model_kwargs)
        if self.name not in timm.list_models():
            raise ValueError(
                f"unknown backbone {self.name!r}: use a timm ViT/Mixer name (e.g. vit_base_patch16_224, "
                f"mixer_b16_224), one of {sorted(DEMO_PRESETS)} or {sorted(GENERIC_FAMILIES)} with model_kwargs"
            )
        return self.name, None, dict(self.model_kwargs)


def create_skeleton(spec: BackboneSpec, device: str | torch.device = "meta") -> nn.Module:
    """Build the full model of ``spec`` with ``spec.num_classes`` outputs on ``device`` (no weights loaded).

    On the ``meta`` device no memory is allocated: callers replace ``blocks`` and materialise only
    what they need.
    """
    timm_name, family, kwargs = spec.constructor()
    try:
        with torch.device(device):
            if timm_name is not None:
                model = timm.create_model(timm_name, pretrained=False, num_classes=spec.num_classes, **kwargs)
            elif family == "vit":
                model = VisionTransformer(num_classes=spec.num_classes, **kwargs)
            else:
                model = MlpMixer(num_classes=spec.num_classes, **kwargs)
    except TypeError as exc:
        raise ValueError(f"backbone {spec.name!r} does not accept model_kwargs {kwargs}: {exc}") from None
    family_of(model)  # rejects anything that is not a ViT or Mixer
    return model


@lru_cache(maxsize=16)
def input_size(spec: BackboneSpec) -> int:
    """Return the square input resolution (pixels) the backbone of ``spec`` expects (cached per process)."""
    model = create_skeleton(spec, device="meta")
    embed = getattr(model, "patch_embed", None) or model.stem
    return int(embed.img_size[0])


def family_of(model: nn.Module) -> Family:
    """Return ``"vit"`` or ``"mixer"`` for a timm model; raise ValueError for any other architecture."""
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, MlpMixer):
        return "mixer"
    raise ValueError(f"unsupported architecture {type(model).__name__}: FedRA here supports timm ViT and MLP-Mixer")


def frozen_keys(model: nn.Module) -> list[str]:
    """Return the sorted state-dict keys of ``model`` that belong to the frozen backbone (all but the head)."""
    return sorted(k for k in model.state_dict() if not k.startswith(HEAD_PREFIX))


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


def save_backbone(state: dict[str, torch.Tensor], path: Path, extra_metadata: dict[str, str] | None = None) -> str:
    """Write the frozen (non-head) tensors of ``state`` to ``path`` atomically; return their fingerprint."""
    frozen = {k: v.detach().contiguous().cpu() for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
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
    family: Family
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
        num_layers=len(skeleton.blocks),
        embed_dim=int(skeleton.embed_dim),
    )


def _weights_file(spec: BackboneSpec, skeleton: nn.Module) -> Path:
    weights = spec.weights
    if weights == "default":
        weights = "demo" if spec.name in DEMO_PRESETS else "hub"
    if weights == "demo":
        if spec.name not in DEMO_PRESETS or spec.model_kwargs:
            raise ValueError(f"weights='demo' needs an unmodified demo preset {sorted(DEMO_PRESETS)}, got {spec.name!r}")
        from fedra_core.demo_backbone import demo_backbone_file  # builds on first use

        return demo_backbone_file(spec.name)
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
        save_backbone(model.state_dict(), path, {"source": f"random seed {spec.seed}"})
    return path


def _hub_weights_file(spec: BackboneSpec) -> Path:
    timm_name, _, kwargs = spec.constructor()
    if timm_name is None:
        raise ValueError(f"weights='hub' needs a timm model name, got {spec.name!r}")
    path = cache_dir() / "backbones" / f"hub-{timm_name}-{_config_tag(spec)}.safetensors"
    if not path.is_file():
        try:
            model = timm.create_model(timm_name, pretrained=True, num_classes=0, **kwargs)
        except Exception as exc:  # network errors come in many types
            raise ValueError(
                f"could not download pre-trained weights for {timm_name!r} ({exc.__class__.__name__}: {exc}); "
                "pass a local .safetensors file as weights instead"
            ) from exc
        save_backbone(model.state_dict(), path, {"source": f"timm hub {timm_name}"})
    return path


def _check_shapes(path: Path, skeleton: nn.Module) -> None:
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if not k.startswith(HEAD_PREFIX)}
    with safe_open(str(path), framework="pt") as f:
        available = set(f.keys())
        for key, shape in expected.items():
            if key not in available:
                raise ValueError(f"backbone file {path} lacks tensor {key!r}; is it the right model?")
            got = tuple(f.get_slice(key).get_shape())
            if got != shape:
                raise ValueError(f"backbone file {path}: tensor {key!r} has shape {got}, the model expects {shape}")
