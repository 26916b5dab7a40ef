"""The model a client trains: the sub-model of its blocks, LoRA, and the method's own modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from fedra_core.backbones import Backbone
from fedra_core.families import ModelFamily
from fedra_core.lora import LoraSettings, add_lora
from fedra_core.methods.base import Method
from fedra_core.submodel import build_submodel


@dataclass(frozen=True, eq=False)
class ModelRecipe:
    """Everything that builds a trainable (sub-)model: the frozen ``backbone``, the ``lora``
    settings and the run's ``method`` (its extra modules). Training, evaluation, calibration, the
    server's evaluation and the ClientApp take this one object."""

    backbone: Backbone
    lora: LoraSettings
    method: Method

    @property
    def family(self) -> ModelFamily:
        """The backbone's model family."""
        return self.backbone.family

    def build(self, blocks: Sequence[int], device: str = "cpu") -> nn.Module:
        """Return the sub-model of ``blocks`` with LoRA and the method's extensions (DepthFL's exits),
        frozen but for the trainable state. Its plain forward is the final head's logits."""
        model = add_lora(build_submodel(self.backbone, blocks, device), self.family, self.lora)
        return self.method.extend_model(model, self.family)
