"""Evaluation of the full global model by a node that can hold only some of its blocks.

The blocks are run in consecutive groups of at most the node's capacity: each group's sub-model is
built from the local backbone file, carries the global state of its blocks, runs a chunk of test
batches and is freed before the next group is read. Without gradients, the peak is one group of
blocks plus the chunk's activations, below the training peak at the same capacity
(``bench.client_memory`` prints both). The operations and batches are the ones of the plain
forward pass, so the result equals the full model's to the last digit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import islice

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedra_core.lora import load_trainable_state, trainable_state
from fedra_core.objectives import NO_SCORES
from fedra_core.trainable import ModelRecipe
from fedra_core.training import EvalResult, autocast, evaluate

CHUNK_BATCHES = 8  # test batches that go through one group before the next group is read


def block_groups(blocks: int | Sequence[int], capacity: int) -> list[list[int]]:
    """Return ``blocks`` (a list of block indices, or a depth L for 0..L-1) cut into consecutive groups
    of at most ``capacity``."""
    if capacity < 1:
        raise ValueError(f"capacity {capacity}: must be at least 1")
    blocks = list(range(blocks)) if isinstance(blocks, int) else list(blocks)
    return [blocks[i : i + capacity] for i in range(0, len(blocks), capacity)]


def model_with_state(
    recipe: ModelRecipe, blocks: Sequence[int], state: Mapping[str, torch.Tensor], device: str | torch.device = "cpu"
) -> nn.Module:
    """Build the sub-model of ``blocks`` from ``recipe`` and load its part of the global trainable
    ``state``; return it in eval mode."""
    model = recipe.build(blocks, str(device))
    keys = list(trainable_state(model))
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"global state lacks {missing[:3]} for blocks {list(blocks)}")
    load_trainable_state(model, {k: state[k] for k in keys})
    return model.eval()


@torch.no_grad()
def streamed_tokens(
    recipe: ModelRecipe,
    state: Mapping[str, torch.Tensor],
    groups: Sequence[Sequence[int]],
    inputs: Sequence[torch.Tensor],
    device: torch.device,
    bf16: bool = False,
) -> tuple[list[torch.Tensor], nn.Module]:
    """Run every batch of ``inputs`` through the embedding and the blocks of ``groups`` in turn, one
    group's sub-model (carrying ``state``) in memory at a time.

    Returns the last block's tokens per batch and the last group's model (it carries the head).
    """
    family = recipe.family
    hidden = [x.to(device) for x in inputs]
    model: nn.Module | None = None
    for g, blocks in enumerate(groups):
        model = None  # the previous group is freed before the next is read
        model = model_with_state(recipe, blocks, state, device)
        with autocast(device, bf16):
            for i, h in enumerate(hidden):
                hidden[i] = family.run_blocks(model, family.embed(model, h) if g == 0 else h)
    assert model is not None, "no block group"
    return hidden, model


@torch.no_grad()
def evaluate_global_model(
    recipe: ModelRecipe,
    state: Mapping[str, torch.Tensor],
    dataset: Dataset,
    capacity: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    blocks: Sequence[int] | None = None,
) -> EvalResult:
    """Return accuracy, mean loss, example, correct and target counts of the global model of ``recipe``
    (its ``blocks``, all by default) carrying ``state`` on ``dataset``, holding at most ``capacity``
    blocks at a time; scored by the family's objective (per response token for a causal LM)."""
    device = torch.device(device)
    family = recipe.family
    groups = block_groups(recipe.backbone.num_layers if blocks is None else blocks, capacity)
    if len(groups) == 1:
        return evaluate(model_with_state(recipe, groups[0], state, device), dataset, batch_size, device, bf16)
    scores, total = NO_SCORES, 0
    batches = iter(DataLoader(dataset, batch_size=batch_size, shuffle=False))
    while chunk := list(islice(batches, CHUNK_BATCHES)):
        hidden, model = streamed_tokens(recipe, state, groups, [x for x, _ in chunk], device, bf16)
        with autocast(device, bf16):
            for h, (_, labels) in zip(hidden, chunk):
                scores = scores + family.objective.hidden_scores(family, model, h, labels.to(device))
                total += len(labels)
        del model, hidden
    return EvalResult.from_scores(scores, total)
