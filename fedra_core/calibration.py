"""Full-depth head calibration, an option of FedRA (``head-calibration-steps``; not in the paper).

In FedRA a client trains the head on the features of its own k-block sub-model, but the global
model puts the head after all L blocks. After local training the client therefore runs some of its
training batches through the full depth of the global model (its freshly trained blocks, the
server's state for the others), without gradients, one group of at most its capacity of blocks in
memory at a time (as the streamed evaluation does), and trains the head (and the final norm when
``train-norm``) on the last block's tokens. The peak stays below the training peak at the same
capacity: one group of frozen blocks and a chunk of activations, no gradients through the blocks
(``bench.client_memory`` measures both).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedra_core.evaluation import CHUNK_BATCHES, block_groups, streamed_tokens
from fedra_core.lora import canonical_key
from fedra_core.state import State
from fedra_core.trainable import ModelRecipe
from fedra_core.training import TrainSettings, autocast


def calibrate_head(
    recipe: ModelRecipe,
    state: Mapping[str, torch.Tensor],
    dataset: Dataset,
    capacity: int,
    settings: TrainSettings,
    steps: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> State:
    """Train the head of ``recipe``'s full-depth model carrying ``state`` for ``steps`` SGD steps on batches of
    ``dataset``, holding at most ``capacity`` blocks at a time.

    ``state`` is the whole global trainable state as the client sees it (its trained blocks, the
    server's for the others). The optimiser settings are the local training's. Returns the trained
    head (and final norm with ``train_norm``) by canonical key, on the CPU.
    """
    if steps < 1:
        raise ValueError(f"head calibration of {steps} steps: must be at least 1")
    device = torch.device(device)
    family = recipe.family
    trained = recipe.lora.trainable_modules(family)
    groups = block_groups(recipe.backbone.num_layers, capacity)
    generator = torch.Generator().manual_seed(seed)
    batches = islice(DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=generator), steps)
    head: dict[str, torch.Tensor] = {}
    momentum: dict | None = None
    while chunk := list(islice(batches, CHUNK_BATCHES)):
        tokens, model = streamed_tokens(recipe, {**state, **head}, groups, [x for x, _ in chunk], device, settings.bf16)
        names = [n for n, p in model.named_parameters() if p.requires_grad and n.split(".")[0] in trained]
        if not names:
            raise ValueError(
                f"head-calibration-steps: the {family.name} model trains no head here (trained modules besides LoRA: "
                f"{list(trained)}); its output layer is pre-trained and frozen: set train-norm=true to calibrate the final norm"
            )
        params = dict(model.named_parameters())
        for n, p in params.items():
            p.requires_grad_(n in names)
        optimizer = torch.optim.SGD(
            [params[n] for n in names], lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
        if momentum is not None:  # the same parameters in the same order: carry the momentum across chunks
            optimizer.load_state_dict(momentum)
        model.train()
        for h, (_, labels) in zip(tokens, chunk):
            with autocast(device, settings.bf16):
                loss = family.objective.hidden_loss(family, model, h, labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([params[n] for n in names], settings.clip_norm)
            optimizer.step()
        momentum = optimizer.state_dict()
        head = {canonical_key(n): params[n].detach().to("cpu").clone() for n in names}
        del model, tokens
    return head
