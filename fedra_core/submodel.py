"""Memory-bounded sub-models: embedding, the held blocks in their original order, final norm, head.

The full model is first built on the ``meta`` device (no memory), its block list is cut down to the
held blocks, and only the tensors those modules need are read from the backbone's safetensors file.
The kept blocks keep their global index as module name (``blocks.7...``), so every state key of a
sub-model is already keyed by global block index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from safetensors import safe_open
from torch import nn

from fedra_core.backbones import Backbone, create_skeleton


def validate_blocks(blocks: Sequence[int], num_layers: int) -> list[int]:
    """Return ``blocks`` sorted after checking they are distinct indices in 0..num_layers-1.

    Raises ValueError naming the bad value.
    """
    out = sorted(int(b) for b in blocks)
    if not out:
        raise ValueError("block indices are empty: a sub-model needs at least one block")
    if len(set(out)) != len(out):
        raise ValueError(f"block indices {list(blocks)} contain duplicates")
    if out[0] < 0 or out[-1] >= num_layers:
        raise ValueError(f"block indices {list(blocks)}: each must lie in 0..{num_layers - 1}")
    return out


def build_submodel(backbone: Backbone, blocks: Sequence[int], device: str | torch.device = "cpu") -> nn.Module:
    """Build the model a client trains from the frozen backbone file, reading only what it needs.

    Takes a resolved :class:`Backbone`, the global indices of the held blocks and a device. Returns
    the family's model whose ``blocks`` is an ``nn.Sequential`` named by global index, with frozen
    backbone weights loaded and a freshly initialised head (the server's head replaces it; families
    whose output layer is pre-trained, ``fresh_head`` False, read it from the file like the rest).
    Tensors of blocks outside ``blocks`` are never read or allocated.
    """
    held = validate_blocks(blocks, backbone.num_layers)
    family = backbone.family
    model = create_skeleton(backbone.spec, device="meta")
    family.keep_blocks(model, held)
    prefix = family.head_prefix
    wanted = [k for k in model.state_dict() if not k.startswith(prefix)]
    tensors = read_tensors(backbone, wanted, device)
    if family.fresh_head:  # a task classifier; a causal LM's output layer comes with the backbone file
        head = model.head
        with torch.device(device):
            fresh_head = nn.Linear(head.in_features, head.out_features)
        reset_head(fresh_head)
        tensors.update({f"{prefix}{k}": v for k, v in fresh_head.state_dict().items()})
    model.load_state_dict(tensors, assign=True, strict=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a non-persistent buffer the family does not rebuild would silently hold no values
        raise ValueError(f"the {family.name} sub-model has tensors no weights file fills: {left[:3]}")
    model.requires_grad_(False)
    return model.eval()


def read_tensors(backbone: Backbone, keys: Sequence[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read exactly ``keys`` from the backbone's safetensors file onto ``device``; return name -> tensor."""
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(backbone.path), framework="pt", device=str(device)) as f:
        available = set(f.keys())
        for key in keys:
            if key not in available:
                raise ValueError(f"backbone file {backbone.path} lacks tensor {key!r}")
            out[key] = f.get_tensor(key)
    return out


def reset_head(head: nn.Linear) -> None:
    """Initialise a classifier head in place (truncated normal std 0.02, zero bias), as timm does."""
    with torch.no_grad():
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
