"""Run configs and helpers shared by the Flower app tests."""

from __future__ import annotations


import numpy as np
import torch

from bench._common import TINY_RUN  # noqa: F401  (three nodes on three digits domains, a tiny seeded ViT)

NODES = {101: {"partition-id": 0}, 102: {"partition-id": 1}, 103: {"partition-id": 2}}


def initial_global_state(run_config: dict) -> dict[str, torch.Tensor]:
    """The global state before round 1, rebuilt here the way the server documents it."""
    from fedra_core import resolve_backbone, trainable_state
    from fedra_core.run_config import load_run_config

    cfg = load_run_config(run_config)
    backbone = resolve_backbone(cfg.backbone_spec())
    torch.manual_seed(cfg.seed)
    model = cfg.recipe(backbone).build(range(backbone.num_layers))
    return {k: v.clone() for k, v in trainable_state(model).items()}


def allocation_rows(message_blocks: list[list[int]], num_layers: int = 12) -> np.ndarray:
    """Bool allocation matrix from per-node block lists."""
    alloc = np.zeros((len(message_blocks), num_layers), dtype=bool)
    for i, blocks in enumerate(message_blocks):
        alloc[i, blocks] = True
    return alloc


def write_imagefolder(root, domain: str, max_train: int = 0, max_test: int = 0, seed: int = 0):
    """Write one digits-benchmark domain as PNG files in the imagefolder layout root/{train,test}/<digit>/;
    return ``root``. ``max_*`` keep the first that many images of a split (0: all)."""
    from pathlib import Path

    from PIL import Image

    from fedra_core.data.digits import raw_domain

    root = Path(root)
    for split, limit in (("train", max_train), ("test", max_test)):
        images, labels = raw_domain(domain, split, seed)
        n = limit or len(labels)
        for i in range(n):
            folder = root / split / str(int(labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    return root


def run_inprocess(tmp_path, nodes=NODES, intercept=None, **overrides) -> tuple:
    """Run a federation in process; return (run folder, grid, [(round, node, reply)])."""
    replies = []

    def record(node_id, message, reply):
        if reply is not None and message.metadata.message_type == "train":
            reply = intercept(node_id, message, reply) if intercept else reply
            if reply is not None:
                replies.append((int(message.content["config"]["server-round"]), node_id, reply))
        return reply

    from runners.local import local_federation

    run_config = {**TINY_RUN, "output-dir": str(tmp_path), "run-name": "run", **overrides}
    run_dir, grid = local_federation(run_config, nodes, intercept=record)
    return run_dir, grid, replies


def train_messages(grid, server_round: int) -> list:
    """Train messages of one round in send order (partition order)."""
    return [
        m for m in grid.sent
        if m.metadata.message_type == "train" and int(m.content["config"]["server-round"]) == server_round
    ]
