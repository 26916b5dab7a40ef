"""Bytes on the wire per node per round, measured from the Flower messages the FedRA strategy sends.

For ViT-B/16 and Mixer-B/16 shapes (random weights, 100 classes, LoRA rank 8 on the reference
targets) the script builds the real global LoRA state (``build_trainable_model`` on all blocks,
``trainable_state``), registers one node per capacity with a real :class:`FedRAStrategy` and calls
``configure_train``. For every message it measures

* ``record_nbytes`` of its ArrayRecord (the serialised ``.npy`` bytes of every Array: what the
  project reports in ``metrics.jsonl``), and
* the Flower object bytes: the deflated content of every object of the message's object tree
  (Message, RecordDict, ArrayRecord, ConfigRecord, Array, ArrayChunk), which is what the SuperLink
  and the SuperNode push and pull (gRPC framing excluded);

and the same for the reply a client sends (same keys, trained values, the ClientApp's metrics).

These are compared with (a) the analytic minimum, LoRA parameters of the allocated blocks plus the
shared head and final norm times 4 bytes, computed by formula from the architecture's published
hyper-parameters (not from this code), and (b) what the reference code ships: whole blocks
(frozen weights included, parameter counts of the timm model) plus the LoRA of those blocks,
embedding, final norm and head.

Run from the repository root:  ``.venv/bin/python -m bench.wire_bytes``  (``--help`` for options).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import BENCH_CACHE, load_avg, MB, format_table, machine, set_env_defaults, write_results

# Published hyper-parameters of the two backbones (Dosovitskiy et al. 2021; Tolstikhin et al. 2021).
# The analytic minimum is computed from these, independently of the project's code.
ARCH: dict[str, dict[str, int]] = {
    # ViT-B/16: width 768, MLP hidden 3072; LoRA targets attn.proj (768->768) and mlp.fc2 (3072->768).
    "vit_base_patch16_224": {"width": 768, "mlp_hidden": 3072, "depth": 12},
    # Mixer-B/16 at 224: 196 patches, token-MLP hidden 384, channel-MLP hidden 3072; LoRA targets
    # mlp_tokens.fc2 (384->196) and mlp_channels.fc2 (3072->768).
    "mixer_b16_224": {"width": 768, "tokens": 196, "token_hidden": 384, "mlp_hidden": 3072, "depth": 12},
}


def lora_params_per_block(model_name: str, rank: int) -> int:
    """Return the LoRA parameters of one block: r*(in+out) for each adapted Linear (A: r x in, B: out x r)."""
    a = ARCH[model_name]
    d = a["width"]
    if model_name.startswith("vit"):
        return rank * (d + d) + rank * (a["mlp_hidden"] + d)
    return rank * (a["token_hidden"] + a["tokens"]) + rank * (a["mlp_hidden"] + d)


def shared_params(model_name: str, num_classes: int) -> int:
    """Return the parameters of the shared trainable keys: head (C x D + C) and final LayerNorm (2 D)."""
    d = ARCH[model_name]["width"]
    return num_classes * d + num_classes + 2 * d


def analytic_bytes(model_name: str, k: int, rank: int, num_classes: int) -> int:
    """Return the minimum payload of one message for a client holding ``k`` blocks (float32)."""
    return 4 * (k * lora_params_per_block(model_name, rank) + shared_params(model_name, num_classes))


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of the frozen timm model: per block, embedding (everything before the blocks
    and outside them), final norm and head."""

    per_block: list[int]
    embedding: int
    norm: int
    head: int


def param_counts(model_name: str, num_classes: int) -> ParamCounts:
    """Count the parameters of the timm model (built on the meta device, so nothing is allocated)."""
    from fedra_core import BackboneSpec
    from fedra_core.backbones import create_skeleton
    from fedra_core.state import block_of_key

    model = create_skeleton(BackboneSpec(name=model_name, weights="random", num_classes=num_classes), "meta")
    per_block = [0] * len(model.blocks)
    embedding = norm = head = 0
    for name, p in model.named_parameters():
        j = block_of_key(name)
        if j is not None:
            per_block[j] += p.numel()
        elif name.startswith("head."):
            head += p.numel()
        elif name.startswith("norm."):
            norm += p.numel()
        else:
            embedding += p.numel()
    return ParamCounts(per_block, embedding, norm, head)


def whole_block_bytes(counts: ParamCounts, blocks: list[int], lora_per_block: int) -> int:
    """Return what the reference code ships for ``blocks``: their full weights and LoRA, the
    embedding, final norm and head (float32)."""
    params = sum(counts.per_block[j] + lora_per_block for j in blocks) + counts.embedding + counts.norm + counts.head
    return 4 * params


def object_tree_bytes(message: Any) -> tuple[int, int]:
    """Return (bytes, objects) of the Flower object tree of ``message``: the deflated content of
    every node of the tree, which is what is pushed to / pulled from the SuperLink."""
    from flwr.supercore.inflatable.inflatable_object import (
        get_all_nested_objects,
        get_object_tree,
        iterate_object_tree,
    )

    objects = get_all_nested_objects(message)
    total, count = 0, 0
    for node in iterate_object_tree(get_object_tree(message)):
        total += len(objects[node.object_id].deflate())
        count += 1
    return total, count


def perturbed(state: dict, scale: float, seed: int) -> dict:
    """Return a copy of ``state`` with Gaussian noise added (stands in for trained values: LoRA B != 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items()}


def measure_model(model_name: str, capacities: list[int], rank: int, num_classes: int) -> dict[str, Any]:
    """Measure downlink and uplink bytes of every node for one backbone; return the figures."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fedra_core import BackboneSpec, LoraSettings, ModelRecipe, get_method, resolve_backbone
    from fedra_core import state_nbytes, trainable_state
    from fedra_core.state import clone_state
    from server_app.strategy import FedRAStrategy, NodeInfo, record_nbytes

    start = time.perf_counter()
    backbone = resolve_backbone(BackboneSpec(name=model_name, weights="random", num_classes=num_classes))
    method = get_method("fedra")
    torch.manual_seed(0)
    model = ModelRecipe(backbone, LoraSettings(rank=rank), method).build(range(backbone.num_layers))
    initial = clone_state(trainable_state(model))
    del model
    counts = param_counts(model_name, num_classes)
    lora_block = lora_params_per_block(model_name, rank)
    # the code's LoRA per block must match the formula (checks the formula, not only the code)
    code_lora_block = sum(v.numel() for k, v in initial.items() if k.startswith("blocks.0.") and "lora_" in k)
    code_shared = sum(v.numel() for k, v in initial.items() if not k.startswith("blocks."))
    assert code_lora_block == lora_block, (model_name, code_lora_block, lora_block)
    assert code_shared == shared_params(model_name, num_classes), (model_name, code_shared)

    states = {"round 1 (initial state, LoRA B = 0)": initial, "steady (trained state, B != 0)": perturbed(initial, 1e-2, 1)}
    out: dict[str, Any] = {"model": model_name, "num_layers": backbone.num_layers, "rank": rank,
                           "num_classes": num_classes, "lora_params_per_block": lora_block,
                           "shared_params": shared_params(model_name, num_classes),
                           "frozen_params_per_block": counts.per_block[0], "embedding_params": counts.embedding,
                           "num_trainable_keys": len(initial), "variants": {}}
    # Messages take their run and task ids from Flower's TaskIdentity, which a ServerApp process sets;
    # set it here the way runners.local does (small integers: the metadata bytes barely change).
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    for variant, global_state in states.items():
        strategy = FedRAStrategy(method=method, num_layers=backbone.num_layers, fingerprint=backbone.fingerprint, seed=0)
        for i, k in enumerate(capacities):
            strategy.register(NodeInfo(node_id=100 + i, partition_id=i, capacity=k))
        messages = list(strategy.configure_train(1, ArrayRecord(global_state), ConfigRecord(), grid=None))  # type: ignore[arg-type]
        rows = []
        for i, msg in enumerate(messages):
            node_id = msg.metadata.dst_node_id
            blocks = [int(b) for b in msg.content["config"]["blocks"]]
            down_record = msg.content["arrays"]
            sent = down_record.to_torch_state_dict()
            # the client's reply: same keys, trained values, the metrics the ClientApp sends
            trained = perturbed(sent, 1e-3, 1000 + i)
            reply = Message(
                RecordDict(
                    {
                        "arrays": ArrayRecord(trained),
                        "metrics": MetricRecord(
                            {"num-examples": 1000, "examples-seen": 1000, "steps": 8, "train-loss": 1.0,
                             "capacity-layers": len(blocks), "train-seconds": 1.0}
                        ),
                    }
                ),
                reply_to=msg,
            )
            up_record = reply.content["arrays"]
            down_obj, down_n = object_tree_bytes(msg)
            up_obj, up_n = object_tree_bytes(reply)
            analytic = analytic_bytes(model_name, len(blocks), rank, num_classes)
            rows.append(
                {
                    "node_id": node_id,
                    "capacity": strategy.nodes[node_id].capacity,
                    "blocks": blocks,
                    "num_arrays": len(down_record),
                    "tensor_bytes": state_nbytes(sent),
                    "down_record_bytes": record_nbytes(down_record),
                    "down_object_bytes": down_obj,
                    "down_objects": down_n,
                    "up_record_bytes": record_nbytes(up_record),
                    "up_object_bytes": up_obj,
                    "up_objects": up_n,
                    "analytic_bytes": analytic,
                    "whole_block_bytes": whole_block_bytes(counts, blocks, lora_block),
                }
            )
            assert rows[-1]["capacity"] == len(blocks)
            assert rows[-1]["tensor_bytes"] == analytic, (model_name, len(blocks), rows[-1]["tensor_bytes"], analytic)
        out["variants"][variant] = rows
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def table_for(result: dict[str, Any], variant: str) -> str:
    """Return the per-capacity table of one backbone and state variant."""
    headers = ["k", "arrays", "ours down MB", "ours up MB", "Flower objects down MB", "analytic MB",
               "overhead % (npy)", "overhead % (objects)", "whole-block MB", "whole-block / ours"]
    rows = []
    for r in result["variants"][variant]:
        a = r["analytic_bytes"]
        rows.append([
            r["capacity"], r["num_arrays"], f"{r['down_record_bytes'] / MB:.4f}", f"{r['up_record_bytes'] / MB:.4f}",
            f"{r['down_object_bytes'] / MB:.4f}", f"{a / MB:.4f}",
            f"{100 * (r['down_record_bytes'] - a) / a:.2f}", f"{100 * (r['down_object_bytes'] - a) / a:.2f}",
            f"{r['whole_block_bytes'] / MB:.1f}", f"{r['whole_block_bytes'] / r['down_record_bytes']:.1f}x",
        ])
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description="Bytes per node per round of FedRA messages vs the analytic minimum and whole-block shipping.")
    parser.add_argument("--models", default="vit_base_patch16_224,mixer_b16_224", help="comma-separated timm names (default: %(default)s)")
    parser.add_argument("--capacities", default="12,10,8,6,4,3", help="one node per capacity (default: %(default)s)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=100, help="classifier classes (default: %(default)s, DomainNet)")
    parser.add_argument("--cache", default=BENCH_CACHE, help="FEDRA_CACHE if unset (random backbones are written there once)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/wire_bytes.json)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    set_env_defaults(args.cache)
    host = machine()
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    capacities = [int(c) for c in args.capacities.split(",")]
    results = [measure_model(m, capacities, args.rank, args.num_classes) for m in args.models.split(",")]
    for res in results:
        for variant in res["variants"]:
            print(f"\n{res['model']}, rank {res['rank']}, {res['num_classes']} classes, {variant} "
                  f"({res['num_trainable_keys']} trainable keys in the global state):")
            print(table_for(res, variant))
            rows = res["variants"][variant]
            down = sum(r["down_record_bytes"] for r in rows)
            up = sum(r["up_record_bytes"] for r in rows)
            ana = sum(r["analytic_bytes"] for r in rows)
            whole = sum(r["whole_block_bytes"] for r in rows)
            print(f"all {len(rows)} nodes, one round: down {down / MB:.3f} MB + up {up / MB:.3f} MB "
                  f"(analytic {ana / MB:.3f} MB each way; whole blocks {whole / MB:.1f} MB down)")
    path = write_results("wire_bytes", {"machine": {**host, "load_avg_at_end": load_avg()}, "command": " ".join(["python -m bench.wire_bytes", *argv]),
                                        "capacities": capacities, "results": results}, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
