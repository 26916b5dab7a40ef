"""DepthFL baseline: extra classifiers every d blocks and mutual self-distillation between them.

Exit heads sit after global blocks d-1, 2d-1, ... (the model's own head follows the last block).
Their state keys are ``exits.{j}.*``: shared keys that a client receives only for exits inside its
prefix. The global model is evaluated with its last head, as DepthFL does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedra_core.submodel import embed_tokens, held_blocks, pool_tokens

EXIT_PREFIX = "exits."


def exit_blocks(blocks: Sequence[int], every: int) -> list[int]:
    """Return the held blocks after which an extra classifier sits: multiples of ``every`` minus one,
    excluding the last held block (the model's own head follows it)."""
    if every < 1:
        raise ValueError(f"depthfl exit interval {every}: must be at least 1")
    held = sorted(blocks)
    return [j for j in held[:-1] if (j + 1) % every == 0]


class ExitHead(nn.Module):
    """An intermediate classifier: LayerNorm on the tokens, the model's pooling, a linear layer."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor, model: nn.Module) -> torch.Tensor:
        return self.fc(pool_tokens(model, self.norm(tokens)))


def add_exits(model: nn.Module, every: int, num_classes: int) -> nn.Module:
    """Attach trainable exit heads (``model.exits``) after the held exit blocks of ``model``; return it."""
    param = next(model.parameters())
    model.exits = nn.ModuleDict(
        {str(j): ExitHead(int(model.embed_dim), num_classes) for j in exit_blocks(held_blocks(model), every)}
    ).to(param.device)
    return model


def forward_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Return the logits of every exit of ``model`` (none for a plain model), then the final head's."""
    exits = getattr(model, "exits", None)
    if not exits:
        return [model(x)]
    outputs = []
    tokens = embed_tokens(model, x)
    for name, block in model.blocks.named_children():
        tokens = block(tokens)
        if name in exits:
            outputs.append(exits[name](tokens, model))
    outputs.append(model.forward_head(model.norm(tokens)))
    return outputs


def consistency_weight(server_round: int, ramp_rounds: int = 500) -> float:
    """Sigmoid ramp-up of the distillation weight, exp(-5 (1 - t)^2) with t = round / ramp_rounds."""
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
