"""Atomic checkpoints of the server's whole state, as one safetensors file."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file

from fedra_core.state import State

GLOBAL = "global/"
METHOD = "method/"
CHECKPOINT_NAME = "checkpoint.safetensors"


class CheckpointError(ValueError):
    """A checkpoint cannot be used for resuming; the message is one line naming the file."""


@dataclass
class ServerState:
    """Everything a resumed run needs: the last completed round, the global trainable state, the
    method's own server state (InclusiveFL's momentum) and the bookkeeping (capacities, config).

    Random draws are derived from (seed, round), so no generator state has to be carried.
    """

    round: int
    global_state: State
    method_state: State = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Return the sha256 over ``tensors`` in key order: each key, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().contiguous().cpu()
        digest.update(json.dumps([key, str(value.dtype), list(value.shape)]).encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: Path, state: ServerState) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename, fsync of the folder.
    The metadata carry a sha256 over the tensors, which :func:`load_checkpoint` verifies."""
    tensors = {GLOBAL + k: v.detach().contiguous().cpu() for k, v in state.global_state.items()}
    tensors.update({METHOD + k: v.detach().contiguous().cpu() for k, v in state.method_state.items()})
    metadata = {"round": str(state.round), "info": json.dumps(state.info), "sha256": tensors_sha256(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path, expected: Mapping[str, torch.Tensor] | None = None) -> ServerState:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``expected`` (the run's initial global state) makes every key and shape of the saved global state
    be checked against it. Raises CheckpointError, one line naming the file: missing (with what to
    do), unreadable, truncated or corrupt, tensors not matching the checksum written with them, a
    NaN or infinite value, or made for another model.
    """
    if not path.is_file():
        raise CheckpointError(
            f"config key 'resume' = true: no checkpoint at {path} (name the run to resume with 'run-name', "
            "or set resume=false to start a new run)"
        )
    try:
        # one read of the whole file: safetensors' lazy reader opens the file again by name, so a
        # checkpoint replaced in between (the server writing its next round) would mix two files
        data = path.read_bytes()
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
        tensors = load(data)
        round_ = int(metadata["round"])
        info = json.loads(metadata["info"])
        checksum = metadata["sha256"]
    except Exception as exc:  # any corruption ends up here
        raise CheckpointError(f"resume: checkpoint {path} cannot be read ({exc.__class__.__name__}: {exc})") from None
    if tensors_sha256(tensors) != checksum:
        raise CheckpointError(f"resume: checkpoint {path} fails its checksum (its tensors were changed after it was written)")
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"resume: checkpoint {path} holds NaN or infinite values in {key!r}")
    state = ServerState(
        round=round_,
        global_state={k[len(GLOBAL):]: v for k, v in tensors.items() if k.startswith(GLOBAL)},
        method_state={k[len(METHOD):]: v for k, v in tensors.items() if k.startswith(METHOD)},
        info=info,
    )
    if expected is not None:
        got = state.global_state
        wrong = sorted(set(expected) ^ set(got)) or [k for k in expected if tuple(got[k].shape) != tuple(expected[k].shape)]
        if wrong:
            raise CheckpointError(f"resume: checkpoint {path} does not fit this run's model (first differing key {wrong[0]!r})")
    return state
