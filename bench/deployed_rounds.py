"""Where a deployed round's time goes, with and without the warm node worker, next to the same rounds
on the simulation engine.

Runs the same FedRA rounds on three paths: ``worker`` (a SuperLink with TLS and node authentication
and three SuperNodes on loopback, ``deploy.launch_local``; each node holds one digits domain,
``data-format digits``; every message answered by the node's warm worker, the default),
``per-message`` (the same deployment with ``node-worker='off'``: Flower's fresh ClientApp process
loads everything for every message, as before the worker) and ``simulated`` (Flower's simulation
engine, three nodes on the same three domains as partitions). Every node and simulated client uses
one torch thread. Every reply carries the node's own phase times (``train-timings`` /
``eval-timings`` in ``metrics.jsonl``): process start-up (until the ClientApp module starts
importing), the ClientApp's imports, the hand-over to the worker (``forward``), backbone, data,
training or evaluation, and the reply (from the node's reply to the server's receipt of all replies).
Prints, per round and path, the mean over nodes of each phase and the round's wall time, the steady
rounds' (round 2 on) ratio to the simulated one, and the workers' memory after each round (resident
and peak, from each worker's ``messages.jsonl``).

    python -m bench.deployed_rounds --rounds 4
    python -m bench.deployed_rounds --rounds 20 --paths worker      # the workers' memory over 20 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import BENCH_CACHE, format_table, load_avg, machine, set_env_defaults, write_results
from runners import processes

DOMAINS = ("mnist", "printed", "usps")
CAPACITIES = (12, 6, 3)
RUN = {
    "backbone": "vit",
    "backbone-kwargs": json.dumps({"img_size": 28, "patch_size": 7, "embed_dim": 96, "depth": 12, "num_heads": 3}),
    "backbone-weights": "random",
    "domains": ",".join(DOMAINS),
    "capacities": ",".join(map(str, CAPACITIES)),
    "local-steps": 8,
    "batch-size": 64,
    "eval-max-examples": 500,
    "lr": 0.05,
}
PHASES = ("startup", "imports", "forward", "backbone", "data", "train", "evaluate", "reply")
PATHS = ("worker", "per-message", "simulated")


def run_deployed(run_config: dict[str, Any], work: Path, node_worker: str) -> Path:
    """Run the rounds on a loopback deployment with node-config ``node-worker`` = ``node_worker``;
    return the run folder."""
    from deploy.launch_local import NodeSpec, local_federation

    name = f"deployed-{node_worker}"
    nodes = [NodeSpec(cap, data_format="digits", domain=d, name=f"node-{d}", threads=1, node_worker=node_worker)
             for d, cap in zip(DOMAINS, CAPACITIES)]
    config = {**run_config, "run-name": name, "output-dir": str(work)}
    with local_federation(nodes, work / f"federation-{node_worker}") as fed:
        result = fed.run_app(config, timeout=3600)
    if not result.ok:
        raise RuntimeError(f"deployed run failed ({result.status}):\n{result.output[-3000:]}")
    return work / name


def run_simulated(run_config: dict[str, Any], work: Path) -> Path:
    """Run the rounds on Flower's simulation engine; return the run folder."""
    from runners.simulate import run_simulation

    config = {**run_config, "run-name": "simulated", "output-dir": str(work)}
    os.environ["OMP_NUM_THREADS"] = "1"  # one torch thread per simulated client, as per deployed node
    code = run_simulation(config, len(DOMAINS), timeout=3600)
    if code != 0:
        raise RuntimeError(f"simulated run failed with exit code {code}")
    return work / "simulated"


def round_breakdown(run_dir: Path) -> list[dict[str, float]]:
    """Return, per round >= 1, the round's seconds and the mean over nodes of each phase (train and
    evaluation messages added up per node)."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["round"] < 1:
            continue
        per_node: dict[str, dict[str, float]] = {}
        for key in ("train-timings", "eval-timings"):
            for node, phases in record.get(key, {}).items():
                into = per_node.setdefault(node, {})
                for phase, seconds in phases.items():
                    into[phase] = into.get(phase, 0.0) + seconds
        row = {"round": record["round"], "seconds": record["seconds"]}
        for phase in PHASES:
            row[phase] = statistics.mean(p.get(phase, 0.0) for p in per_node.values()) if per_node else 0.0
        rows.append(row)
    return rows


def worker_memory(cache: Path, since: float) -> dict[str, list[dict[str, float]]]:
    """Return, per worker folder of ``cache`` that served messages since ``since``, the worker's resident
    and peak memory (MiB) after each round: after the evaluation message of round r (the first
    evaluation is round 0's)."""
    from client_app import channel, worker_client

    out = {}
    for folder in worker_client.worker_folders(cache):
        log = folder / channel.MESSAGES
        if not log.exists():
            continue
        evals = [r for r in map(json.loads, log.read_text().splitlines()) if r["time"] >= since and r["kind"] == "evaluate"]
        if evals:
            out[folder.name] = [{"round": i, "rss-mib": r["rss-mib"], "peak-mib": r["peak-mib"]} for i, r in enumerate(evals)]
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--cache", default=BENCH_CACHE, help="FEDRA_CACHE if unset")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/deployed_rounds.json)")
    args = parser.parse_args(argv)
    processes.install_signal_handlers()  # SIGTERM and SIGINT stop the federation or simulation in progress
    set_env_defaults(args.cache)
    from fedra_core import resolve_backbone
    from fedra_core.cache import cache_dir
    from fedra_core.data.federation import domain_split
    from fedra_core.run_config import load_run_config

    run_config = {**RUN, "num-server-rounds": args.rounds}
    cfg = load_run_config(run_config)
    resolve_backbone(cfg.backbone_spec())  # built and cached before anything is timed
    for d in DOMAINS:
        domain_split(cfg.data_spec(), d, "test")
    work = Path(tempfile.mkdtemp(prefix="fedra-deployed-rounds-"))
    runners = {"worker": lambda: run_deployed(run_config, work, "auto"),
               "per-message": lambda: run_deployed(run_config, work, "off"),
               "simulated": lambda: run_simulated(run_config, work)}
    results: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    for name in args.paths:
        start = time.perf_counter()
        since = time.time()
        run_dir = runners[name]()
        results[name] = {"wall_seconds": time.perf_counter() - start, "rounds": round_breakdown(run_dir)}
        if name == "worker":
            memory = worker_memory(cache_dir(), since)
    headers = ["path", "round", "round s", *[f"{p} s" for p in PHASES]]
    rows = []
    for name, res in results.items():
        for r in res["rounds"]:
            rows.append([name, r["round"], f"{r['seconds']:.1f}", *[f"{r[p]:.2f}" for p in PHASES]])
    print("\nPer round: the round's wall time on the server and the mean over nodes of each phase "
          "(train + evaluation messages of a node added up):")
    print(format_table(headers, rows))
    steady = {name: statistics.mean(r["seconds"] for r in res["rounds"][1:] or res["rounds"]) for name, res in results.items()}
    ratios = {name: steady[name] / steady["simulated"] for name in steady if "simulated" in steady and name != "simulated"}
    print("\nsteady round (round 2 on): " + ", ".join(f"{name} {s:.1f} s" for name, s in steady.items())
          + "".join(f"; {name} / simulated {r:.2f}" for name, r in ratios.items())
          + "; whole runs " + ", ".join(f"{name} {res['wall_seconds']:.0f} s" for name, res in results.items()))
    growth = {}
    for folder, rounds in memory.items():
        print(f"worker {folder}: resident / peak MiB after rounds 0..{len(rounds) - 1}: "
              + " ".join(f"{r['rss-mib']:.0f}/{r['peak-mib']:.0f}" for r in rounds))
        if len(rounds) > 2:
            growth[folder] = rounds[-1]["peak-mib"] / rounds[2]["peak-mib"] - 1
    if growth:
        print("worker peak after the last round against after round 2: "
              + ", ".join(f"{folder} {100 * g:+.1f}%" for folder, g in growth.items()))
    path = write_results("deployed_rounds", {
        "machine": {**machine(), "load_avg_at_end": load_avg()},
        "command": " ".join(["python -m bench.deployed_rounds", *(argv or [])]),
        "run_config": run_config, "results": results, "steady_round_seconds": steady, "ratios": ratios,
        "worker_memory": memory, "worker_peak_growth": growth,
    }, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
