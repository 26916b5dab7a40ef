"""Local training and evaluation loops."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedra_core.objectives import NO_SCORES, Scores

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, inputs, labels) -> loss


def cross_entropy_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the cross-entropy of ``model``'s logits on a batch (the default training loss)."""
    return F.cross_entropy(model(inputs).float(), labels)


@dataclass(frozen=True)
class TrainSettings:
    """Local optimisation settings; defaults are the FedRA reference code's.

    max_steps caps the optimiser steps per round (None: ``local_epochs`` full passes).
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    clip_norm: float = 10.0
    batch_size: int = 128
    local_epochs: int = 1
    max_steps: int | None = None
    bf16: bool = False


@dataclass(frozen=True)
class TrainResult:
    """What a round of local training produced: mean loss, dataset size, examples seen, steps."""

    loss: float
    num_examples: int
    examples_seen: int
    steps: int


@dataclass(frozen=True)
class EvalResult:
    """Top-1 accuracy (0..1), mean cross-entropy, the number of examples evaluated, of correct
    predictions and of scored predictions (``targets``: the examples for classification, the response
    tokens for a causal LM, where accuracy and loss are per token; 0 given means one per example)."""

    accuracy: float
    loss: float
    num_examples: int
    correct: int = 0
    targets: int = 0

    def __post_init__(self) -> None:
        if self.targets == 0:
            object.__setattr__(self, "targets", self.num_examples)

    @classmethod
    def from_scores(cls, scores: Scores, num_examples: int) -> "EvalResult":
        """Return the result of pooled :class:`~fedra_core.objectives.Scores` over ``num_examples`` examples."""
        n = max(scores.targets, 1)
        return cls(scores.correct / n, scores.loss_sum / n, num_examples, scores.correct, scores.targets)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """Return a bfloat16 autocast context for ``device`` when ``bf16``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_local(
    model: nn.Module,
    dataset: Dataset,
    settings: TrainSettings,
    device: str | torch.device = "cpu",
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train the trainable parameters of ``model`` on ``dataset`` with SGD and gradient clipping.

    ``loss_fn(model, inputs, labels)`` gives the batch loss (the method's; by default the model
    family's objective: cross-entropy of the logits, or the mean token NLL of a causal LM's
    response tokens). The data order and dropout follow ``seed``. Returns a :class:`TrainResult`;
    the model is updated in place.
    """
    if loss_fn is None:
        from fedra_core.families import family_of

        family = family_of(model)
        loss_fn = lambda m, x, y: family.objective.loss(family, m, x, y)  # noqa: E731
    device = torch.device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=generator, drop_last=False)
    torch.manual_seed(seed)  # LoRA dropout
    model.train()
    total_loss, seen, steps = 0.0, 0, 0
    for _ in range(settings.local_epochs):
        for images, labels in loader:
            if settings.max_steps is not None and steps >= settings.max_steps:
                break
            images, labels = images.to(device), labels.to(device)
            with autocast(device, settings.bf16):
                loss = loss_fn(model, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, settings.clip_norm)
            optimizer.step()
            total_loss += float(loss.detach()) * len(labels)
            seen += len(labels)
            steps += 1
    model.eval()
    return TrainResult(loss=total_loss / max(seen, 1), num_examples=len(dataset), examples_seen=seen, steps=steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu", bf16: bool = False
) -> EvalResult:
    """Return the top-1 accuracy and mean loss of ``model`` (its final head) on ``dataset``, scored by
    its family's objective (per example for classification, per response token for a causal LM)."""
    from fedra_core.families import family_of

    device = torch.device(device)
    model.eval()
    family = family_of(model)
    scores, total = NO_SCORES, 0
    for inputs, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        inputs, labels = inputs.to(device), labels.to(device)
        with autocast(device, bf16):
            scores = scores + family.objective.scores(family, model, inputs, labels)
        total += len(labels)
    return EvalResult.from_scores(scores, total)
