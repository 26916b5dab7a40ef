"""Accuracy benchmark on the offline digits benchmark: FedRA against ALLlarge, ALLsmall, InclusiveFL
and DepthFL, in three heterogeneity settings, with rich clients on the easy or on the hard domains.

Every run goes through the real ServerApp and ClientApp logic in one process (``runners.local``,
no Ray), several runs in parallel worker processes. Finished runs are reused, so the command can be
stopped and started again. Prints a table per setting (mean and spread over seeds of the per-domain
and average top-1 of the final global model, with the untuned round-0 model as a row) and writes
``bench/results/accuracy.json`` (``accuracy-<settings>.json`` for a subset of settings) and
``bench/results/accuracy-<setting>.png``.

    python -m bench.accuracy --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench._common import RESULTS_DIR, write_results
from fedra_core.methods import method_names

METHODS = method_names()  # the registry's order: FedRA first, then the baselines
# Domains from easiest to hardest for the demo backbone (pre-trained on MNIST digits): measured by the
# accuracy of a model trained on MNIST alone on each domain (see README, digits benchmark).
EASY_TO_HARD = ("mnist", "usps", "optdigits", "mnistm", "printed", "housenum")
SETTINGS = {
    # one client per domain, capacities as in the paper
    "feature": {"capacities": [12, 10, 8, 6, 4, 3], "partitioning": "feature"},
    # several clients per domain with Dirichlet(0.5) labels; one client per domain trains each round
    "feature-label": {"capacities": [12, 10, 8, 6, 4, 3], "partitioning": "feature-label", "clients-per-domain": 3,
                      "dirichlet-alpha": 0.5, "client-sampling": "per-domain"},
    # nobody can hold the whole model
    "extreme": {"capacities": [6, 6, 4, 4, 3, 3], "partitioning": "feature"},
}
BASE = {"num-server-rounds": 10, "local-steps": 8, "batch-size": 64, "lr": 0.05, "eval-every": 5}


def variant_suffix(overrides: dict) -> str:
    """Return the name suffix of a run that departs from BASE (``-r30-lr0.1``), or "" for BASE itself."""
    short = {"num-server-rounds": "r", "lr": "lr"}
    return "".join(f"-{tag}{overrides[k]}" for k, tag in short.items() if overrides.get(k, BASE[k]) != BASE[k])


def run_config(setting: str, assignment: str, method: str, seed: int, domains: tuple[str, ...], out: Path,
               overrides: dict | None = None) -> dict:
    """Return the run config of one benchmark run; ``overrides`` replace BASE keys and name the run."""
    overrides = overrides or {}
    spec = dict(SETTINGS[setting])
    caps = spec.pop("capacities")
    order = [d for d in EASY_TO_HARD if d in domains]
    if assignment == "rich-hard":
        order = order[::-1]
    # capacities are given per domain in the dataset's domain order
    by_domain = {d: caps[i] for i, d in enumerate(order)}
    cfg = {**BASE, **overrides, **spec, "method": method, "seed": seed, "domains": ",".join(domains),
           "capacities": ",".join(str(by_domain[d]) for d in domains),
           "output-dir": str(out), "run-name": f"{setting}-{assignment}-{method}-s{seed}{variant_suffix(overrides)}"}
    return cfg


def _run_one(cfg: dict, nodes: int) -> Path:
    run_dir = Path(cfg["output-dir"]) / cfg["run-name"]
    if (run_dir / "summary.md").is_file():
        return run_dir
    from runners.simulate import format_run_config

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "runners.local", "--num-nodes", str(nodes), "--run-config", format_run_config(cfg)]
    start = time.perf_counter()
    log = run_dir.parent / f"{cfg['run-name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    print(f"  done {cfg['run-name']} in {time.perf_counter() - start:.0f} s", flush=True)
    return run_dir


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def summarise(runs: dict[tuple, Path], domains: tuple[str, ...]) -> dict:
    """Return {setting: {assignment: {row: {domain/avg: [per seed]}, "_curves": ..., "_seeds": ...}}}
    from finished runs; rows are the methods and the untuned round-0 model, lists in seed order."""
    out: dict = {}
    for (setting, assignment, method, seed), run_dir in sorted(runs.items()):
        recs = _records(run_dir)
        cell = out.setdefault(setting, {}).setdefault(assignment, {})
        cell.setdefault("_seeds", {}).setdefault(method, []).append(seed)
        for row, rec in (("untuned (round 0)", recs[0]), (method, recs[-1])):
            accs = cell.setdefault(row, {})
            for d in domains:
                accs.setdefault(d, []).append(100 * rec["accuracy"][d])
            accs.setdefault("average", []).append(100 * rec["average"])
        curve = cell.setdefault("_curves", {}).setdefault(method, {})
        for rec in recs:
            if "average" in rec:
                curve.setdefault(rec["round"], []).append(100 * rec["average"])
    return out


def paired_gap(rows: dict, method: str) -> tuple[float, float] | None:
    """Return mean and standard deviation over seeds of FedRA's average minus ``method``'s, paired by
    seed (same data split and allocation seed), or None without FedRA runs of the same seeds."""
    seeds = rows.get("_seeds", {})
    if method == "fedra" or "fedra" not in rows or seeds.get("fedra") != seeds.get(method):
        return None
    gaps = np.subtract(rows["fedra"]["average"], rows[method]["average"])
    return float(np.mean(gaps)), float(np.std(gaps))


def print_tables(summary: dict, domains: tuple[str, ...]) -> str:
    """Return markdown tables (mean ± std over seeds, and FedRA's paired gap to each method) for every
    setting and assignment."""
    lines = []
    for setting, by_assignment in summary.items():
        for assignment, rows in by_assignment.items():
            lines += [f"\n### {setting}, {assignment}\n",
                      "| method | " + " | ".join(domains) + " | average | FedRA − method (paired) |",
                      "|---" * (len(domains) + 3) + "|"]
            for row in ("untuned (round 0)",) + METHODS:
                if row not in rows:
                    continue
                cells = [f"{np.mean(rows[row][d]):.1f} ± {np.std(rows[row][d]):.1f}" for d in (*domains, "average")]
                gap = paired_gap(rows, row) if row in METHODS else None
                cells.append(f"{gap[0]:+.1f} ± {gap[1]:.1f}" if gap else "")
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def plot(summary: dict, suffix: str = "") -> None:
    """Write accuracy-per-round plots (mean over seeds), one figure per setting, named with ``suffix``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for setting, by_assignment in summary.items():
        fig, axes = plt.subplots(1, len(by_assignment), figsize=(5.5 * len(by_assignment), 4), squeeze=False)
        for ax, (assignment, rows) in zip(axes[0], sorted(by_assignment.items())):
            for method in (m for m in METHODS if m in rows["_curves"]):  # fixed order and colour per method
                curve = rows["_curves"][method]
                rounds = sorted(curve)
                ax.plot(rounds, [np.mean(curve[r]) for r in rounds], marker="o", label=method,
                        color=f"C{METHODS.index(method)}")
            ax.set(title=f"{setting}, {assignment}", xlabel="round", ylabel="average top-1 (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS_DIR / f"accuracy-{setting}{suffix}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--assignments", nargs="+", default=["rich-easy", "rich-hard"], choices=["rich-easy", "rich-hard"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "accuracy-runs"))
    parser.add_argument("--weights", default="default", help="backbone-weights for every run (pin a file)")
    parser.add_argument("--rounds", type=int, default=BASE["num-server-rounds"], help="server rounds (names the runs)")
    parser.add_argument("--lr", type=float, default=BASE["lr"], help="client learning rate (names the runs)")
    args = parser.parse_args(argv)
    overrides = {"num-server-rounds": args.rounds, "lr": args.lr}
    suffix = variant_suffix(overrides)

    from fedra_core.demo.digits import DIGITS_DOMAINS

    domains = tuple(DIGITS_DOMAINS)
    out = Path(args.out)
    jobs = {}
    for setting in args.settings:
        for assignment in args.assignments:
            for method in args.methods:
                for seed in args.seeds:
                    cfg = {**run_config(setting, assignment, method, seed, domains, out, overrides), "backbone-weights": args.weights}
                    nodes = len(domains) * int(cfg.get("clients-per-domain", 1)) if cfg["partitioning"] != "feature" else len(domains)
                    jobs[(setting, assignment, method, seed)] = (cfg, nodes)
    print(f"{len(jobs)} runs, {args.jobs} at a time", flush=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {key: pool.submit(_run_one, cfg, nodes) for key, (cfg, nodes) in jobs.items()}
        runs = {key: f.result() for key, f in futures.items()}
    summary = summarise(runs, domains)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tables = print_tables(summary, domains)
    plot(summary, suffix)
    name = "accuracy" if set(args.settings) == set(SETTINGS) else "accuracy-" + "-".join(args.settings)
    write_results(f"{name}{suffix}", {"base": {**BASE, **overrides}, "settings": SETTINGS, "easy_to_hard": EASY_TO_HARD,
                                      "seeds": args.seeds, "summary": summary, "tables": tables,
                                      "seconds": time.perf_counter() - start})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
