"""Server aggregation time of ``fedra_core.aggregate_fedra`` for 10, 100 and 1,000 client updates.

One real global state of ViT-B/16 LoRA (rank 8 on ``attn.proj`` and ``mlp.fc2``, 100 classes) is
built with ``build_trainable_model`` on all blocks. Each client gets capacities drawn uniformly from
{3..12}, a random FedRA allocation (``random_allocation``) and an update: the
global tensors of its blocks and the shared keys plus Gaussian noise, each a distinct tensor (no
views into a shared pool, which would fit in cache and flatter the timings). The client states are
generated once for the largest count and the smaller counts use a prefix, so memory is that of the
largest set (about 1.6 MB per client: about 1.6 GB for 1,000).

For each count the script times ``aggregate_fedra`` and, as the floor it is compared with, a plain
memory copy of the same bytes: ``clone`` of every client tensor (allocation + copy) and ``copy_``
of every client tensor into preallocated buffers (a bare memcpy); each is repeated and reported as
the median.

Run from the repository root:  ``.venv/bin/python -m bench.aggregation_speed``  (``--help`` for options).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import BENCH_CACHE, load_avg, MB, format_table, machine, median, set_env_defaults, timed, write_results

MODEL = "vit_base_patch16_224"


def build_clients(global_state: dict, n: int, num_layers: int, seed: int) -> tuple[list[dict], Any]:
    """Return ``n`` client states (noisy copies of the global keys each client holds) and their
    bool allocation matrix (capacities uniform in 3..num_layers)."""
    import numpy as np
    import torch

    from fedra_core import select_state
    from fedra_core.allocation import random_allocation

    rng = np.random.default_rng(seed)
    capacities = rng.integers(3, num_layers + 1, size=n).tolist()
    allocation = random_allocation(capacities, num_layers, rng)
    gen = torch.Generator().manual_seed(seed)
    states = []
    for row in allocation:
        sub = select_state(global_state, np.flatnonzero(row).tolist())
        state = {}
        for k, v in sub.items():
            t = torch.randn(v.shape, generator=gen)
            t.mul_(1e-3).add_(v)
            state[k] = t
        states.append(state)
    return states, allocation


def copy_all(states: list[dict]) -> list:
    """Clone every tensor of ``states`` (allocation + copy of the same bytes)."""
    return [t.clone() for s in states for t in s.values()]


def copy_into(states: list[dict], buffers: list) -> None:
    """Copy every tensor of ``states`` into preallocated ``buffers`` (a plain memcpy of the same bytes)."""
    i = 0
    for s in states:
        for t in s.values():
            buffers[i].copy_(t)
            i += 1


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description="Time aggregate_fedra over many ViT-B/16 LoRA client updates vs a plain memory copy.")
    parser.add_argument("--clients", default="10,100,1000", help="client counts (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per count; the median is reported (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s; the ops are small, one thread is what the server uses per key)")
    parser.add_argument("--num-classes", type=int, default=100, help="classifier classes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=BENCH_CACHE, help="FEDRA_CACHE if unset")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/aggregation_speed.json)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    set_env_defaults(args.cache)
    host = machine()
    import torch

    from fedra_core import BackboneSpec, LoraSettings, aggregate_fedra, ModelRecipe, get_method
    from fedra_core import resolve_backbone, state_nbytes, trainable_state
    from fedra_core.state import clone_state

    torch.set_num_threads(args.threads)
    counts = sorted(int(c) for c in args.clients.split(","))
    backbone = resolve_backbone(BackboneSpec(name=MODEL, weights="random", num_classes=args.num_classes))
    torch.manual_seed(args.seed)
    model = ModelRecipe(backbone, LoraSettings(rank=8), get_method("fedra")).build(range(backbone.num_layers))
    global_state = clone_state(trainable_state(model))
    del model
    gc.collect()
    start = time.perf_counter()
    all_states, all_alloc = build_clients(global_state, counts[-1], backbone.num_layers, args.seed)
    gen_seconds = time.perf_counter() - start
    print(f"generated {counts[-1]} client states ({sum(state_nbytes(s) for s in all_states) / MB:.0f} MB) in {gen_seconds:.1f} s",
          file=sys.stderr, flush=True)

    results: list[dict[str, Any]] = []
    for n in counts:
        states, alloc = all_states[:n], all_alloc[:n]
        nbytes = sum(state_nbytes(s) for s in states)
        ntensors = sum(len(s) for s in states)
        aggregate_fedra(global_state, states, alloc)  # warm-up
        agg = timed(lambda: aggregate_fedra(global_state, states, alloc), args.repeats)
        copy_all(states)  # warm-up
        cp = timed(lambda: copy_all(states), args.repeats)
        buffers = copy_all(states)
        mc = timed(lambda: copy_into(states, buffers), args.repeats)
        del buffers
        results.append({
            "clients": n, "client_bytes": nbytes, "client_tensors": ntensors,
            "mean_capacity": float(alloc.sum(axis=1).mean()),
            "aggregate_seconds": agg, "copy_seconds": cp, "memcpy_seconds": mc,
            "aggregate_median": median(agg), "copy_median": median(cp), "memcpy_median": median(mc),
        })
        print(f"  {n} clients: aggregate {median(agg):.3f} s, clone {median(cp):.3f} s, copy_ {median(mc):.3f} s",
              file=sys.stderr, flush=True)

    headers = ["clients", "update MB", "tensors", "aggregate s (median)", "per client ms", "growth vs previous",
               "clone s (median)", "aggregate / clone", "copy_ s (median)", "aggregate / copy_", "aggregate GB/s"]
    rows = []
    prev = None
    for r in results:
        a, c, m = r["aggregate_median"], r["copy_median"], r["memcpy_median"]
        growth = f"{a / prev['aggregate_median']:.1f}x for {r['clients'] / prev['clients']:.0f}x clients" if prev else ""
        rows.append([r["clients"], f"{r['client_bytes'] / MB:.1f}", r["client_tensors"], f"{a:.4f}",
                     f"{1000 * a / r['clients']:.2f}", growth, f"{c:.4f}", f"{a / c:.1f}x", f"{m:.4f}", f"{a / m:.1f}x",
                     f"{r['client_bytes'] / a / 1e9:.2f}"])
        prev = r
    print(f"\naggregate_fedra, ViT-B/16 LoRA rank 8 ({len(global_state)} global keys, "
          f"{state_nbytes(global_state) / MB:.2f} MB), capacities uniform in 3..12, {args.repeats} repeats, "
          f"{args.threads} torch thread(s):")
    print(format_table(headers, rows))
    path = write_results("aggregation_speed", {
        "machine": {**host, "load_avg_at_end": load_avg()}, "command": " ".join(["python -m bench.aggregation_speed", *argv]),
        "model": MODEL, "global_keys": len(global_state), "global_bytes": state_nbytes(global_state),
        "threads": args.threads, "repeats": args.repeats, "generate_seconds": gen_seconds, "results": results,
    }, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
