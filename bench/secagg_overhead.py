"""Per-round cost of secure aggregation against the plain round: seconds and bytes, server and node,
at 6, 20 and 50 simulated nodes.

The protocol runs for real and in process (``runners.local.InProcessGrid``): the real
:class:`server_app.secagg_strategy.SecAggStrategy` and :func:`server_app.secure_aggregation.secure_train_round`
on the server, the real ``client_app.secure_aggregation`` stages on every node; only training is
left out: a node's "trained" state is the received state plus a seeded random delta. The trainable
state has ViT-B/16's LoRA shapes (rank 8 on ``attn.proj`` and ``mlp.fc2``, 12 blocks, a 100-class
head); capacities cycle through 12, 10, 8, 6, 4, 3. The plain round is the same strategy's
``configure_train`` / ``aggregate_train`` on the same allocation.

Node seconds: the time spent in each node's handlers (key setup, share exchange, masking, unmasking;
the plain round's handler only builds its reply); server seconds: the round's wall time minus the
nodes' (everything runs in one process, one message at a time). Bytes: arrays (``.npy`` payloads)
and config records (keys, 8 per number, string and byte lengths) of every message a node receives
and sends.

Run from the repository root:  ``.venv/bin/python -m bench.secagg_overhead``  (``--help`` for options).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bench._common import format_table, machine, write_results
from fedra_core import wire
from fedra_core.methods import get_method
from fedra_core.run_config import load_run_config
from runners.local import InProcessGrid
from server_app.exchange import send_and_receive
from server_app.secagg_strategy import SecAggStrategy
from server_app.secure_aggregation import config_nbytes, secure_train_round
from server_app.strategy import NodeInfo, record_nbytes

CAPACITIES = (12, 10, 8, 6, 4, 3)


def lora_state(width: int = 768, rank: int = 8, depth: int = 12, classes: int = 100) -> dict[str, torch.Tensor]:
    """A global LoRA state of ViT shapes: rank-``rank`` A and B of ``attn.proj`` and ``mlp.fc2`` per
    block (A random, B zero, as LoRA starts) and the head."""
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for j in range(depth):
        for target, fan_in in (("attn.proj", width), ("mlp.fc2", 4 * width)):
            state[f"blocks.{j}.{target}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) * 0.01
            state[f"blocks.{j}.{target}.lora_B.weight"] = torch.zeros(width, rank)
    state["head.weight"] = torch.randn(classes, width, generator=gen) * 0.01
    state["head.bias"] = torch.zeros(classes)
    return state


def node_delta(node_id: int, server_round: int, received: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seeded 'training' of a node: a normal delta (std 0.01) on every received key."""
    gen = torch.Generator().manual_seed(node_id * 1000 + server_round)
    return {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in received.items()}


def _train(msg: Message, context: Context) -> Message:
    from client_app.secure_aggregation import masked_arrays

    received = msg.content[wire.ARRAYS].to_torch_state_dict()
    server_round = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
    delta = node_delta(context.node_id, server_round, received)
    trained = {k: received[k] + delta[k] for k in received}
    examples = int(context.node_config["num-examples"])
    arrays = masked_arrays(msg, context, trained, received, examples) if wire.SECAGG in msg.content else ArrayRecord(trained)
    metrics = MetricRecord({wire.NUM_EXAMPLES: examples, wire.TRAIN_LOSS: 1.0})
    return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=msg)


def simulated_client_app() -> ClientApp:
    """A ClientApp with the real secure-aggregation stages and a synthetic train handler."""
    from client_app import secure_aggregation as node

    app = ClientApp()
    app.train()(_train)
    app.query("secagg_setup")(node.setup)
    app.query("secagg_shares")(node.share_keys)
    app.query("secagg_unmask")(node.unmask)
    return app


class TimedApp:
    """Calls a ClientApp and adds the seconds each node spends in it (in ``seconds[node]``)."""

    def __init__(self, app: ClientApp) -> None:
        self.app = app
        self.seconds: dict[int, float] = defaultdict(float)

    def __call__(self, message: Message, context: Context) -> Message:
        start = time.perf_counter()
        try:
            return self.app(message, context)
        finally:
            self.seconds[context.node_id] += time.perf_counter() - start


def _nbytes(message: Message) -> int:
    arrays = sum(record_nbytes(r) for r in message.content.array_records.values())
    return arrays + config_nbytes(message)


def simulate_round(num_nodes: int, secure: bool, drop: Iterable[int] = (), width: int = 768, seed: int = 0,
                   threshold: float = 0.5, aggregation: str = "uniform") -> dict[str, Any]:
    """Run round 1 over ``num_nodes`` simulated nodes (ids 1..n, 100*id examples); the nodes in
    ``drop`` lose their train reply (after masking). Returns the new global state (None when the
    round failed), the round's metrics, server and per-node seconds, per-node bytes in and out."""
    state = lora_state(width)
    run_config = {"secure-aggregation": secure, "secagg-threshold": threshold, "aggregation": aggregation,
                  "capacities": ",".join(str(CAPACITIES[i % len(CAPACITIES)]) for i in range(num_nodes)), "seed": seed}
    cfg = load_run_config(run_config)
    strategy = SecAggStrategy(get_method("fedra"), num_layers=12, fingerprint="synthetic", seed=seed, weighted=aggregation == "examples")
    nodes = {i: {"num-examples": 100 * i} for i in range(1, num_nodes + 1)}
    for i in nodes:
        strategy.register(NodeInfo(i, i - 1, CAPACITIES[(i - 1) % len(CAPACITIES)], num_train=100 * i))
    dropped = set(drop)
    sizes: dict[int, dict[str, int]] = defaultdict(lambda: {"in": 0, "out": 0})

    def intercept(node_id: int, message: Message, reply: Message) -> Message | None:
        sizes[node_id]["in"] += _nbytes(message)
        sizes[node_id]["out"] += _nbytes(reply)
        if reply.has_error():
            raise RuntimeError(f"node {node_id}: {reply.error.reason}")
        return None if message.metadata.message_type == "train" and node_id in dropped else reply

    app = TimedApp(simulated_client_app())
    grid = InProcessGrid(app, nodes, {k: v for k, v in run_config.items()}, intercept)
    start = time.perf_counter()
    if secure:
        arrays, metrics = secure_train_round(grid, strategy, 1, state, cfg)
    else:
        messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid))
        arrays, metrics = strategy.aggregate_train(1, send_and_receive(grid, messages, cfg.round_timeout))
    wall = time.perf_counter() - start
    return {
        "state": None if arrays is None else arrays.to_torch_state_dict(),
        "metrics": dict(metrics),
        "server-seconds": wall - sum(app.seconds.values()),
        "node-seconds": dict(app.seconds),
        "bytes": {n: dict(v) for n, v in sizes.items()},
    }


def measure(num_nodes: int, width: int) -> dict[str, Any]:
    """Plain and secure round 1 at ``num_nodes``: seconds and bytes, with the secure/plain ratios."""
    out: dict[str, Any] = {"nodes": num_nodes}
    for mode in ("plain", "secure"):
        result = simulate_round(num_nodes, mode == "secure", width=width)
        node_s = list(result["node-seconds"].values())
        out[mode] = {
            "server-seconds": result["server-seconds"],
            "node-seconds-mean": float(np.mean(node_s)),
            "node-seconds-max": float(np.max(node_s)),
            "bytes-out-mean": float(np.mean([b["out"] for b in result["bytes"].values()])),
            "bytes-in-mean": float(np.mean([b["in"] for b in result["bytes"].values()])),
        }
    plain, secure = out["plain"], out["secure"]
    out["upload-ratio"] = secure["bytes-out-mean"] / plain["bytes-out-mean"]
    out["key-bytes-per-node"] = secure["bytes-out-mean"] - plain["bytes-out-mean"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; write ``bench/results/secagg_overhead.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="6,20,50", help="comma-separated node counts")
    parser.add_argument("--width", type=int, default=768, help="ViT width of the LoRA shapes (768: ViT-B/16)")
    args = parser.parse_args(argv)
    rows, results = [], []
    for n in (int(x) for x in args.nodes.split(",")):
        r = measure(n, args.width)
        results.append(r)
        p, s = r["plain"], r["secure"]
        rows.append([n, f"{p['server-seconds']:.2f}", f"{s['server-seconds']:.2f}", f"{p['node-seconds-mean']:.3f}",
                     f"{s['node-seconds-mean']:.3f}", f"{p['bytes-out-mean'] / 1e6:.3f}", f"{s['bytes-out-mean'] / 1e6:.3f}",
                     f"{r['upload-ratio']:.3f}", f"{r['key-bytes-per-node'] / 1e3:.1f}",
                     f"{p['bytes-in-mean'] / 1e6:.3f}", f"{s['bytes-in-mean'] / 1e6:.3f}"])
        print(f"{n} nodes done", file=sys.stderr)
    headers = ["nodes", "server s plain", "server s secure", "node s plain", "node s secure", "node out MB plain",
               "node out MB secure", "out ratio", "extra out kB/node", "node in MB plain", "node in MB secure"]
    print(format_table(headers, rows))
    path = write_results("secagg_overhead", {"machine": machine(), "width": args.width, "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
