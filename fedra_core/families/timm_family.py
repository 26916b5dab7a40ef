"""What the timm families share: construction from a timm class or registry name, ``forward_head``."""

from __future__ import annotations

from typing import Any, ClassVar

import timm
import torch
from torch import nn

from fedra_core.families.base import ModelFamily


class TimmFamily(ModelFamily):
    """A timm architecture given by its model class (``model_class``)."""

    model_class: ClassVar[type[nn.Module]]

    def owns(self, model: nn.Module) -> bool:  # noqa: D102
        return isinstance(model, self.model_class)

    def create(self, kwargs: dict[str, Any], num_classes: int, registry_name: str | None = None) -> nn.Module:  # noqa: D102
        if registry_name is not None:
            return timm.create_model(registry_name, pretrained=False, num_classes=num_classes, **kwargs)
        return self.model_class(num_classes=num_classes, **kwargs)

    def head(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """timm's own head: final norm, pooling (and ``fc_norm``), head dropout, classifier."""
        return model.forward_head(model.norm(tokens))

    def recipe(self, registry_name: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        return {"timm_name": registry_name, "timm_class": None if registry_name else self.model_class.__name__}
