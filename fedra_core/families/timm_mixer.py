"""timm MLP-Mixers (``MlpMixer`` and the registry models built on it)."""

from __future__ import annotations

import torch
from timm.models.mlp_mixer import MlpMixer
from torch import nn

from fedra_core.families.timm_family import TimmFamily


class TimmMixer(TimmFamily):
    """MLP-Mixer: patch stem, token-mixing and channel-mixing blocks, final norm, mean pooling, head."""

    name = "mixer"
    model_class = MlpMixer
    lora_targets = ("mlp_tokens.fc2", "mlp_channels.fc2")

    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return model.stem(x)

    def pool(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return tokens.mean(dim=1)

    def input_size(self, model: nn.Module) -> int:  # noqa: D102
        return int(model.stem.img_size[0])
