"""What the engine needs to know about a model family, behind one interface.

Every family exposes its model the same way: ``model.blocks`` is an ``nn.Sequential`` of the
blocks named by their global index (so every state key of block j contains ``blocks.{j}.``),
``model.head`` is the classifier and the embedding, pooling and final norm are reached only through
the family's methods. Sub-models, LoRA, evaluation and the methods use nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fedra_core.objectives import CLASSIFICATION, Objective


class ModelFamily(ABC):
    """One model family (timm ViT, timm MLP-Mixer, a transformers text encoder, ...).

    Class attributes: ``name`` (the family's key), ``lora_targets`` (default LoRA target module
    suffixes), ``trainable_modules`` (top-level modules trained and shared besides the adapters:
    the head and, for the timm families, the final norm), ``head_prefix``, ``objective`` (what the
    model is trained and scored on: :mod:`fedra_core.objectives`) and ``fresh_head`` (True: ``model.head``
    is the task's classifier, initialised fresh on every build and not part of the backbone file; False:
    the output layer is part of the pre-trained backbone, as a causal LM's output embedding).
    """

    name: ClassVar[str]
    lora_targets: ClassVar[tuple[str, ...]]
    trainable_modules: ClassVar[tuple[str, ...]] = ("head", "norm")
    head_prefix: ClassVar[str] = "head."
    objective: ClassVar[Objective] = CLASSIFICATION
    fresh_head: ClassVar[bool] = True

    def parse_name(self, name: str) -> str | None:
        """Return the family's own model reference when ``name`` is written in the family's own form
        (``hf:/path`` for transformers encoders), else None."""
        return None

    def local_weights(self, reference: str | None) -> Path | None:
        """Return the local file of ``reference``'s pre-trained weights with canonical keys when the
        family can provide one without a download (None: use the hub)."""
        return None

    @abstractmethod
    def owns(self, model: nn.Module) -> bool:
        """Return True when ``model`` belongs to this family."""

    @abstractmethod
    def create(self, kwargs: dict[str, Any], num_classes: int, registry_name: str | None = None) -> nn.Module:
        """Build the full model (on the current default device) from constructor ``kwargs``, or from
        the family's registry entry ``registry_name`` with ``kwargs`` as overrides; return it."""

    @abstractmethod
    def embed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run the part of ``model`` before its blocks on the input ``x``; return the token sequence."""

    @abstractmethod
    def pool(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Pool a (normalised) token sequence the way the model's head does; return the features."""

    def run_blocks(self, model: nn.Module, tokens: torch.Tensor, context: Any = None) -> torch.Tensor:
        """Run the held blocks of ``model`` in order on ``tokens``; return the tokens."""
        return model.blocks(tokens)

    def tokens_of(self, hidden: Any) -> torch.Tensor:
        """Return the token states of the value passed between blocks (itself for the timm families)."""
        return hidden

    def head(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Final norm, pooling and classifier on the last block's tokens; return the logits."""
        return model.head(self.pool(model, model.norm(tokens)))

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Embedding, the held blocks, head; return the logits (equals ``model(x)``)."""
        return self.head(model, self.run_blocks(model, self.embed(model, x)))

    def keep_blocks(self, model: nn.Module, blocks: Sequence[int]) -> None:
        """Replace ``model.blocks`` by the blocks ``blocks`` only, named by their global index."""
        model.blocks = nn.Sequential(OrderedDict((str(j), model.blocks[j]) for j in blocks))

    def num_blocks(self, model: nn.Module) -> int:
        """Return the number of blocks of a full model."""
        return len(model.blocks)

    def width(self, model: nn.Module) -> int:
        """Return the width of the block outputs (what an exit classifier reads)."""
        return int(model.embed_dim)

    def input_size(self, model: nn.Module) -> int:
        """Return the square input resolution in pixels (0 for models whose input is not an image)."""
        return 0

    def tokenizer_folder(self, registry_name: str | None) -> str:
        """Return the transformers folder holding the tokenizer that text data is tokenised with ("" when none)."""
        return ""

    def recipe(self, registry_name: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Return what a plain library needs to rebuild the frozen model (part of ``backbone.json``)."""
        return {}

    def native_key(self, key: str) -> str:
        """Map a canonical state key (or module path) to the model's own name (identity for timm models)."""
        return key

    def native_target(self, target: str) -> str:
        """Map a LoRA target suffix to the model's own module names (identity for timm models)."""
        return target


def held_blocks(model: nn.Module) -> list[int]:
    """Return the global indices of the blocks a (sub-)model holds, in order."""
    return [int(name) for name, _ in model.blocks.named_children()]
