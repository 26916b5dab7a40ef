"""timm Vision Transformers (``VisionTransformer`` and the registry models built on it)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fedra_core.families.timm_family import TimmFamily


class TimmViT(TimmFamily):
    """ViT: patch embedding plus position embedding and class token, pre-norm blocks, final norm,
    class-token pooling (``fc_norm`` when timm uses it), linear head."""

    name = "vit"
    model_class = VisionTransformer
    # the reference code's pattern "proj" also matches the patch embedding's Conv2d
    lora_targets = ("patch_embed.proj", "attn.proj", "mlp.fc2")

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = model.patch_embed(x)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        return model.norm_pre(x)

    def pool(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return model.fc_norm(model.pool(tokens))

    def input_size(self, model: nn.Module) -> int:  # noqa: D102
        return int(model.patch_embed.img_size[0])
