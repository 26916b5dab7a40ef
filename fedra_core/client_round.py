"""One client's training round, as the ClientApp runs it: the sub-model of its blocks from the local
backbone, the received state loaded, local training with the method's loss, then the method's own
client step (FedRA's head calibration), if any."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from fedra_core import wire
from fedra_core.lora import load_trainable_state, trainable_state
from fedra_core.methods.base import LocalRound
from fedra_core.privacy import clip_update
from fedra_core.state import State
from fedra_core.trainable import ModelRecipe
from fedra_core.training import TrainResult, TrainSettings, train_local


def train_client_round(
    recipe: ModelRecipe,
    blocks: Sequence[int],
    received: Mapping[str, torch.Tensor],
    context: Mapping[str, torch.Tensor],
    data: Dataset,
    capacity: int,
    settings: TrainSettings,
    round_config: Mapping[str, float | int | str],
    device: torch.device,
    seed: int,
    lap: Callable[[str], None] = lambda phase: None,
) -> tuple[State, TrainResult]:
    """Train the sub-model of ``blocks`` carrying the ``received`` state on ``data``; return the
    trained state (CPU, canonical keys) and the training result.

    ``context``: the read-only global state sent besides the client's own keys (the method's
    ``context_keys``); ``round_config``: the training message's config (the method's per-round
    values; with ``dp-clip-norm`` the returned state's update from ``received``, over every key,
    is clipped to that L2 norm: :func:`fedra_core.privacy.clip_update`); ``seed`` seeds local
    training, ``seed + 1`` the method's client step. ``lap(phase)`` is called after ``train`` and after the method's step (its ``client_step`` name), for timing.
    """
    method, family = recipe.method, recipe.family
    model = recipe.build(blocks, str(device))
    load_trainable_state(model, received)

    def loss_fn(model, inputs, labels):
        return method.loss(model, family, inputs, labels, round_config)

    result = train_local(model, data, settings, device, seed=seed, loss_fn=loss_fn)
    state = {k: v.to("cpu") for k, v in trainable_state(model).items()}
    del model
    lap("train")
    job = LocalRound(recipe.backbone, recipe.lora, list(blocks), state, context, data, capacity, settings, torch.device(device), seed + 1)
    replaced = method.after_local_training(job)
    if replaced is not None:
        state.update(replaced)
        lap(method.client_step)
    if wire.DP_CLIP_NORM in round_config:  # differential privacy: the whole update, clipped to L2 <= C
        state = clip_update(state, received, float(round_config[wire.DP_CLIP_NORM]))
    return state, result
