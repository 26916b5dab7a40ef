"""DepthFL: prefixes of each client's capacity, extra classifiers every d blocks, mutual self-distillation.

Exit heads sit after global blocks d-1, 2d-1, ... (the model's own head follows the last block).
Their state keys are ``exits.{j}.*``: shared keys that a client receives only for exits inside its
prefix. The distillation weight follows a sigmoid ramp over ``depthfl-ramp-rounds`` (by default the
run's length, so that distillation is on by the end of any run; the reference code ramps over 500
rounds, which leaves it near zero in a short run) and travels
with each training message. The global model is evaluated with its last head, as DepthFL does, after
the deepest block any client holds (``allocation.prefix_model_blocks``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedra_core.allocation import prefix_allocation, prefix_model_blocks
from fedra_core.families import ModelFamily, held_blocks
from pydantic import Field

from fedra_core.methods.base import Method, MethodConfig
from fedra_core.methods.registry import register_method
from fedra_core.state import block_of_key

EXIT_PREFIX = "exits."
DISTILL_WEIGHT = "distill-weight"


def exit_blocks(blocks: Sequence[int], every: int) -> list[int]:
    """Return the held blocks after which an extra classifier sits: multiples of ``every`` minus one,
    excluding the last held block (the model's own head follows it)."""
    if every < 1:
        raise ValueError(f"depthfl exit interval {every}: must be at least 1")
    held = sorted(blocks)
    return [j for j in held[:-1] if (j + 1) % every == 0]


class ExitHead(nn.Module):
    """An intermediate classifier: LayerNorm on the tokens, the family's pooling, a linear layer.

    ``num_classes`` 0 (families whose output layer is pre-trained, ``fresh_head`` False: a causal LM's
    output embedding over the whole vocabulary): no linear layer of its own; the exit's LayerNorm
    feeds the family's frozen head (final norm and output layer), so an exit trains ``width`` x 2 values.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes) if num_classes else None
        if self.fc is not None:
            nn.init.trunc_normal_(self.fc.weight, std=0.02)
            nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor, model: nn.Module, family: ModelFamily) -> torch.Tensor:
        features = family.pool(model, self.norm(family.tokens_of(tokens)))
        return self.fc(features) if self.fc is not None else family.head(model, features)


def add_exits(model: nn.Module, family: ModelFamily, every: int) -> nn.Module:
    """Attach trainable exit heads (``model.exits``) after the held exit blocks of ``model``; return it."""
    param = next(model.parameters())
    num_classes = model.head.out_features if family.fresh_head else 0
    model.exits = nn.ModuleDict(
        {str(j): ExitHead(family.width(model), num_classes) for j in exit_blocks(held_blocks(model), every)}
    ).to(param.device)
    return model


def forward_outputs(model: nn.Module, family: ModelFamily, x: torch.Tensor) -> list[torch.Tensor]:
    """Return the logits of every exit of ``model`` (none for a plain model), then the final head's."""
    exits = getattr(model, "exits", None)
    if not exits:
        return [model(x)]
    outputs = []
    tokens = family.embed(model, x)
    for name, block in model.blocks.named_children():
        tokens = block(tokens)
        if name in exits:
            outputs.append(exits[name](tokens, model, family))
    outputs.append(family.head(model, tokens))
    return outputs


def scored_outputs(
    model: nn.Module, family: ModelFamily, x: torch.Tensor, labels: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Return the float logits of every exit of ``model``, then of the final head, on the predictions
    the family's objective scores (every example for classification, the response tokens of a causal
    LM), and the matching 1-D labels."""
    objective = family.objective
    exits = getattr(model, "exits", None)
    if not exits:
        logits, y = objective.outputs(family, model, x, labels)
        return [logits], y
    outputs = []
    tokens = family.embed(model, x)
    for name, block in model.blocks.named_children():
        tokens = block(tokens)
        if name in exits:
            features, y = objective.select(family, tokens, labels)
            outputs.append(exits[name](features, model, family).float())
    features, y = objective.select(family, tokens, labels)
    outputs.append(objective.logits(family, model, features))
    return outputs, y


def consistency_weight(server_round: int, ramp_rounds: int = 500) -> float:
    """Sigmoid ramp-up of the distillation weight, exp(-5 (1 - t)^2) with t = round / ramp_rounds."""
    if ramp_rounds < 1:
        raise ValueError(f"depthfl ramp of {ramp_rounds} rounds: must be at least 1")
    phase = 1.0 - min(max(server_round, 0), ramp_rounds) / ramp_rounds
    return float(math.exp(-5.0 * phase * phase))


def mutual_distillation_loss(outputs: Sequence[torch.Tensor], labels: torch.Tensor, weight: float) -> torch.Tensor:
    """Sum of every exit's cross-entropy plus ``weight`` times the mean KL from each other exit's
    (detached) prediction to it."""
    loss = sum(F.cross_entropy(o, labels) for o in outputs)
    n = len(outputs)
    if n > 1 and weight > 0:
        for i, student in enumerate(outputs):
            log_p = F.log_softmax(student, dim=1)
            for k, teacher in enumerate(outputs):
                if k != i:
                    target = F.softmax(teacher.detach(), dim=1)
                    loss = loss + weight * F.kl_div(log_p, target, reduction="batchmean") / (n - 1)
    return loss


class DepthFLConfig(MethodConfig):
    """DepthFL's knobs.

    depthfl-every: an exit classifier after every d-th block. depthfl-ramp-rounds: rounds of the
    distillation weight's sigmoid ramp (0: the run's length; the reference code's 500 leaves
    distillation near zero in a short run).
    """

    depthfl_every: int = Field(3, alias="depthfl-every", ge=1)
    depthfl_ramp_rounds: int = Field(0, alias="depthfl-ramp-rounds", ge=0)


@register_method
class DepthFL(Method):
    """Prefixes of each client's capacity with exit classifiers and mutual self-distillation."""

    name = "depthfl"
    summary = "clients train prefixes with an exit classifier every d blocks and mutual self-distillation"
    config_class = DepthFLConfig
    config: DepthFLConfig

    def allocate(self, capacities: Sequence[int], num_layers: int, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        return prefix_allocation(capacities, num_layers)

    def model_blocks(self, num_layers: int, capacities: Sequence[int]) -> list[int]:  # noqa: D102
        return prefix_model_blocks(capacities, num_layers)

    def extend_model(self, model: nn.Module, family: ModelFamily) -> nn.Module:  # noqa: D102
        return add_exits(model, family, self.config.depthfl_every)

    def client_keys(self, keys: Iterable[str], blocks: Sequence[int]) -> list[str]:
        """The keys of ``blocks``, the shared keys and only the exits inside the client's prefix."""
        held = set(blocks)
        exits = {str(j) for j in exit_blocks(blocks, self.config.depthfl_every)}
        out = []
        for key in keys:
            j = block_of_key(key)
            if key.startswith(EXIT_PREFIX):
                if key[len(EXIT_PREFIX):].split(".", 1)[0] in exits:
                    out.append(key)
            elif j is None or j in held:
                out.append(key)
        return out

    def round_config(self, server_round: int) -> dict[str, float]:  # noqa: D102
        ramp = self.config.depthfl_ramp_rounds or self.num_rounds
        if ramp < 1:
            raise ValueError("depthfl-ramp-rounds = 0 means the run's length, but the method was given no num_rounds")
        return {DISTILL_WEIGHT: consistency_weight(server_round, ramp)}

    def loss(self, model, family, inputs, labels, round_config: Mapping[str, float]) -> torch.Tensor:  # noqa: D102
        outputs, targets = scored_outputs(model, family, inputs, labels)
        return mutual_distillation_loss(outputs, targets, float(round_config[DISTILL_WEIGHT]))
