"""FedRA against the baselines on SmolLM2-135M with chatterbot topics as nodes: perplexity on the held-out pairs.

The demo's federation (:data:`runners.demo_llm.DEMO_LLM_RUN_CONFIG`: five topics, capacities 30, 24,
16, 10, 6 of 30 layers, in process) for every method and seed asked; each run is one fresh process
writing its run folder under ``--output-dir`` (a finished run is reused). Printed: the token-pooled
perplexity over all topics (exp of the mean NLL over every held-out response token) and each topic's,
at round 0 and at the last round, per method (mean over seeds).

CPU: ``python -m bench.causal_lm_accuracy --rounds 3 --seeds 0`` (minutes per run on 2 cores).
GPU, for more rounds and seeds: ``python -m bench.causal_lm_accuracy --rounds 30 --seeds 0,1,2
--run-config "local-steps=20 batch-size=16 eval-max-examples=0 device='cuda'"`` (one process per run).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench._common import format_table, machine, write_results

METHODS = ("fedra", "alllarge", "allsmall", "inclusivefl", "depthfl")


def pooled_perplexity(record: dict[str, Any]) -> float:
    """exp of the mean NLL over every held-out response token of a round's record (all topics pooled)."""
    tokens = record["targets"]
    return math.exp(sum(record["loss"][d] * tokens[d] for d in tokens) / sum(tokens.values()))


def run_one(method: str, seed: int, rounds: int, overrides: str, output_dir: Path) -> Path:
    """Run (or reuse) one federation in a fresh process; return its run folder."""
    name = f"{method}-s{seed}-r{rounds}"
    run_dir = output_dir / name
    if (run_dir / "adapter" / "manifest.json").is_file():
        return run_dir
    config = f"method='{method}' seed={seed} run-name='{name}' output-dir='{output_dir}' {overrides}".strip()
    cmd = [sys.executable, "-m", "runners.demo_llm", "--rounds", str(rounds), "--no-answers", "--run-config", config]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed: {done.stderr[-1500:]}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """Run the matrix, print the tables and write ``bench/results/causal_lm_accuracy.json``."""
    parser = argparse.ArgumentParser(description="FedRA vs baselines on SmolLM2-135M / chatterbot (perplexity)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-config", default="", help="overrides of the demo's run config")
    parser.add_argument("--output-dir", default="bench/results/llm-runs")
    args = parser.parse_args(argv)
    from server_app.outputs import read_metrics

    results: dict[str, list[dict[str, Any]]] = {}
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            run_dir = run_one(method, seed, args.rounds, args.run_config, Path(args.output_dir))
            records = [r for r in read_metrics(run_dir) if r.get("perplexity")]
            first, last = records[0], records[-1]
            results.setdefault(method, []).append({
                "seed": seed, "run": str(run_dir), "round": last["round"],
                "pooled": [pooled_perplexity(first), pooled_perplexity(last)],
                "perplexity": [first["perplexity"], last["perplexity"]],
            })
            print(f"{method} seed {seed}: perplexity {pooled_perplexity(first):.2f} -> {pooled_perplexity(last):.2f}", flush=True)
    topics = list(next(iter(results.values()))[0]["perplexity"][1])
    rows = []
    for method, runs in results.items():
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        rows.append([method, f"{mean([r['pooled'][0] for r in runs]):.2f}", f"{mean([r['pooled'][1] for r in runs]):.2f}",
                     *(f"{mean([r['perplexity'][1][t] for r in runs]):.2f}" for t in topics)])
    print(format_table(["method", "round 0", f"round {args.rounds}", *topics], rows))
    write_results("causal_lm_accuracy", {"machine": machine(), "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
