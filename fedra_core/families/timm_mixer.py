"""timm MLP-Mixers (``MlpMixer`` and the registry models built on it)."""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.mlp_mixer import MlpMixer
from torch import nn

from fedra_core.families.base import ModelFamily


class TimmMixer(ModelFamily):
    """MLP-Mixer: patch stem, token-mixing and channel-mixing blocks, final norm, mean pooling, head."""

    name = "mixer"
    lora_targets = ("mlp_tokens.fc2", "mlp_channels.fc2")

    def owns(self, model: nn.Module) -> bool:  # noqa: D102
        return isinstance(model, MlpMixer)

    def create(self, kwargs: dict[str, Any], num_classes: int, registry_name: str | None = None) -> nn.Module:  # noqa: D102
        if registry_name is not None:
            return timm.create_model(registry_name, pretrained=False, num_classes=num_classes, **kwargs)
        return MlpMixer(num_classes=num_classes, **kwargs)

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return model.stem(x)

    def pool(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return tokens.mean(dim=1)

    def head(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return model.forward_head(model.norm(tokens))

    def input_size(self, model: nn.Module) -> int:  # noqa: D102
        return int(model.stem.img_size[0])

    def recipe(self, registry_name: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        return {"timm_name": registry_name, "timm_class": None if registry_name else "MlpMixer"}
