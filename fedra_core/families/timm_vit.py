"""timm Vision Transformers (``VisionTransformer`` and the registry models built on it)."""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fedra_core.families.base import ModelFamily


class TimmViT(ModelFamily):
    """ViT: patch embedding plus position embedding and class token, pre-norm blocks, final norm,
    class-token pooling (``fc_norm`` when timm uses it), linear head."""

    name = "vit"
    lora_targets = ("attn.proj", "mlp.fc2")

    def owns(self, model: nn.Module) -> bool:  # noqa: D102
        return isinstance(model, VisionTransformer)

    def create(self, kwargs: dict[str, Any], num_classes: int, registry_name: str | None = None) -> nn.Module:  # noqa: D102
        if registry_name is not None:
            return timm.create_model(registry_name, pretrained=False, num_classes=num_classes, **kwargs)
        return VisionTransformer(num_classes=num_classes, **kwargs)

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = model.patch_embed(x)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        return model.norm_pre(x)

    def pool(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return model.fc_norm(model.pool(tokens))

    def head(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return model.forward_head(model.norm(tokens))  # timm's own: pooling, fc_norm, head dropout, head

    def input_size(self, model: nn.Module) -> int:  # noqa: D102
        return int(model.patch_embed.img_size[0])

    def recipe(self, registry_name: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        return {"timm_name": registry_name, "timm_class": None if registry_name else "VisionTransformer"}
