"""FedRA against the baselines on SmolLM2-135M with chatterbot topics as nodes: perplexity on the held-out pairs.

The demo's federation (:data:`runners.demo_llm.DEMO_LLM_RUN_CONFIG`: five topics, capacities 30, 24,
16, 10, 6 of 30 layers, in process) for every method and seed asked; each run is one fresh process
writing its run folder under ``--output-dir`` (a finished run is reused). Printed: the token-pooled
perplexity over all topics (exp of the mean NLL over every held-out response token) and each topic's,
at round 0 and at the last round, per method (mean ± sample sd over seeds), then each baseline against
FedRA paired by seed (:func:`compare_to_fedra`): the difference of the pooled mean token NLL at the
last round (baseline − FedRA, nats a token; positive: FedRA's model predicts the held-out responses
better), its sample sd, the Bonferroni interval over the baselines compared (t interval at level
1 − 0.05/m, m the number of baselines) and Holm's adjusted p value; "FedRA better" / "FedRA worse"
only where that interval excludes 0.

CPU: ``python -m bench.causal_lm_accuracy --rounds 3 --seeds 0`` (minutes per run on 2 cores).
GPU, for more rounds and seeds: ``python -m bench.causal_lm_accuracy --rounds 30 --seeds 0,1,2
--run-config "local-steps=20 batch-size=16 eval-max-examples=0 device='cuda'"`` (one process per run).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench._common import format_table, machine, write_results
from bench.accuracy import holm, pair_by_seed, paired_stats, t_half_width

METHODS = ("fedra", "alllarge", "allsmall", "inclusivefl", "depthfl")


def pooled_perplexity(record: dict[str, Any]) -> float:
    """exp of the mean NLL over every held-out response token of a round's record (all topics pooled)."""
    tokens = record["targets"]
    return math.exp(sum(record["loss"][d] * tokens[d] for d in tokens) / sum(tokens.values()))


def mean_sd2(values: list[float]) -> str:
    """``"<mean> ± <sample sd>"`` with two decimals (three significant digits above 1,000); "± n/a" for one value."""
    import statistics

    fmt = (lambda v: f"{v:.2f}") if max(abs(v) for v in values) < 1000 else (lambda v: f"{v:.3g}")
    if len(values) < 2:
        return f"{fmt(values[0])} ± n/a"
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values))}"


def compare_to_fedra(last_nll: dict[str, dict[int, float]], alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """Pair each other method's last-round pooled NLL with FedRA's by seed: {method: stats}.

    ``last_nll`` maps method -> {seed: pooled NLL}. Each entry holds :func:`bench.accuracy.paired_stats`
    of (method − fedra) plus ``lo_bonf`` / ``hi_bonf``, the t interval at level 1 − alpha/m (m: the
    methods compared), ``p_holm`` and ``verdict``: "FedRA better" when lo_bonf > 0, "FedRA worse" when
    hi_bonf < 0, "no difference shown" otherwise, "n/a" below two paired seeds.
    """
    others = [m for m in last_nll if m != "fedra"]
    out: dict[str, dict[str, Any]] = {}
    for method in others:
        seeds, theirs, ours = pair_by_seed(last_nll[method], last_nll["fedra"])
        out[method] = {"seeds": seeds, **paired_stats(theirs, ours)}
    level = 1 - alpha / max(1, len(others))
    ps = [out[m]["p"] for m in others]
    adjusted = holm([1.0 if p is None else p for p in ps])
    for method, p_holm in zip(others, adjusted):
        entry = out[method]
        if entry["sd"] is None:
            entry.update(lo_bonf=None, hi_bonf=None, p_holm=None, verdict="n/a")
            continue
        half = t_half_width(entry["sd"], entry["n"], level)
        lo, hi = entry["mean"] - half, entry["mean"] + half
        verdict = "FedRA better" if lo > 0 else "FedRA worse" if hi < 0 else "no difference shown"
        entry.update(lo_bonf=lo, hi_bonf=hi, level_bonf=level, p_holm=p_holm, verdict=verdict)
    return out


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
        rows.append([method, mean_sd2([r["pooled"][0] for r in runs]), mean_sd2([r["pooled"][1] for r in runs]),
                     *(mean_sd2([r["perplexity"][1][t] for r in runs]) for t in topics), len(runs)])
    print(format_table(["method", "round 0", f"round {args.rounds}", *topics, "n"], rows))
    comparisons = {}
    if "fedra" in results:
        last_nll = {m: {r["seed"]: math.log(r["pooled"][1]) for r in runs} for m, runs in results.items()}
        comparisons = compare_to_fedra(last_nll)
        fmt = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
        print(format_table(
            ["method − fedra (pooled NLL)", "mean", "sd", "Bonferroni interval", "p (Holm)", "n", "verdict"],
            [[m, fmt(c["mean"]), "n/a" if c["sd"] is None else f"{c['sd']:.3f}",
              "n/a" if c["lo_bonf"] is None else f"({c['lo_bonf']:+.3f}, {c['hi_bonf']:+.3f})",
              "n/a" if c["p_holm"] is None else f"{c['p_holm']:.3g}", c["n"], c["verdict"]] for m, c in comparisons.items()]))
    write_results("causal_lm_accuracy", {"machine": machine(), "args": vars(args), "results": results,
                                         "comparisons": comparisons})
    return 0


if __name__ == "__main__":
    sys.exit(main())
