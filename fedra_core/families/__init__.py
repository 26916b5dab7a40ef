"""Model families: one object per family, found by name or by model."""

from __future__ import annotations

from torch import nn

from fedra_core.families.base import ModelFamily, held_blocks
from fedra_core.families.hf_causal_lm import HFCausalLM
from fedra_core.families.hf_encoder import HFEncoder
from fedra_core.families.timm_mixer import TimmMixer
from fedra_core.families.timm_vit import TimmViT

FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to the registry under its name; return it."""
    FAMILIES[family.name] = family
    return family


def family_named(name: str) -> ModelFamily:
    """Return the registered family ``name``; ValueError naming the allowed ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: allowed {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(model: nn.Module) -> ModelFamily:
    """Return the family ``model`` belongs to; ValueError for an architecture no family owns."""
    for family in FAMILIES.values():
        if family.owns(model):
            return family
    raise ValueError(
        f"unsupported architecture {type(model).__name__}: supported families are {sorted(FAMILIES)}"
    )


register_family(TimmViT())
register_family(TimmMixer())
register_family(HFEncoder())
register_family(HFCausalLM())

__all__ = ["FAMILIES", "ModelFamily", "family_named", "family_of", "held_blocks", "register_family"]
