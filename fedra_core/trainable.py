"""The model a client trains: the sub-model of its blocks, LoRA, and the method's own modules."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fedra_core.backbones import Backbone
from fedra_core.lora import LoraSettings, add_lora
from fedra_core.methods import Method
from fedra_core.submodel import build_submodel


def build_trainable_model(
    backbone: Backbone, blocks: Sequence[int], lora: LoraSettings, method: Method, device: str = "cpu"
) -> nn.Module:
    """Build the sub-model for ``blocks`` with LoRA and the method's extensions (DepthFL's exits),
    frozen but for the trainable state; return it. Its plain forward is the final head's logits."""
    model = add_lora(build_submodel(backbone, blocks, device), backbone.family, lora)
    return method.extend_model(model, backbone.family)
