"""Accuracy against epsilon on the offline digits benchmark: FedRA without DP and with per-block
client-level DP at noise multipliers chosen so that the run ends at epsilon about 1, 4 and 8.

**What runs.** One row per privacy level: ``no-dp`` and ``eps<target>`` with ``dp-noise-multiplier``
the smallest z whose dp-accounting epsilon after ``--rounds`` rounds at ``dp-delta`` (1e-5) is at
most the target (:func:`fedra_core.accounting.noise_for_epsilon`), ``dp-clip-norm`` ``--clip``. Every
(row, seed) is one federation of bench.accuracy's ``feature`` setting under the ``paper`` assignment
(one node per digits domain, capacities 12, 10, 8, 6, 4, 3) with its schedule (``--rounds``,
``--local-steps``, ``--lr``), through the real ServerApp and ClientApp in one process
(``runners.local``), several in parallel; finished runs are reused as bench.accuracy does.

**Outputs.** A markdown table (row, z, the epsilon the runs recorded, final top-1 averaged over the
domains as mean ± sample sd over seeds, n) and ``bench/results/privacy-accuracy[<schedule>][-<tag>].json``
(per-seed numbers, z, epsilon, the machine). Run folders go to
``bench/results/privacy-runs/feature-paper-fedra-s<seed>...-<row>``.

    python -m bench.privacy_accuracy --seeds 0 1 2 --jobs 2
    python -m bench.privacy_accuracy --rounds 3 --seeds 0 --targets 8 --tag smoke   # a quick check
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._common import RESULTS_DIR, format_table, machine, set_env_defaults, write_results
from bench.accuracy import BASE, _records, _run_one, mean_sd, run_config, schedule_suffix
from runners import processes

DELTA = 1e-5
NO_DP = "no-dp"


def noise_rows(targets: list[float], rounds: int, delta: float = DELTA) -> dict[str, float]:
    """Return {row: noise multiplier}: ``no-dp`` (0) and ``eps<t>`` for each target epsilon ``t``
    after ``rounds`` rounds at ``delta``."""
    from fedra_core.accounting import noise_for_epsilon

    return {NO_DP: 0.0, **{f"eps{t:g}": noise_for_epsilon(t, rounds, delta) for t in targets}}


def dp_config(row: str, z: float, seed: int, domains: tuple[str, ...], out: Path, schedule: dict[str, Any],
              clip: float, tag: str) -> dict[str, Any]:
    """Return the run config of one (row, seed): bench.accuracy's feature/paper FedRA run with the DP keys."""
    name = "-".join(p for p in (row, tag) if p)
    cfg = run_config("feature", "paper", "fedra", seed, domains, out, schedule, name)
    return {**cfg, "dp-noise-multiplier": z, "dp-clip-norm": clip, "dp-delta": DELTA}


def main(argv: list[str] | None = None) -> int:
    """Run the rows, print the table and write the JSON; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", type=float, default=[1.0, 4.0, 8.0], help="final epsilons of the DP rows")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=20, help="server rounds (the epsilons are reached after them)")
    parser.add_argument("--local-steps", type=int, default=BASE["local-steps"])
    parser.add_argument("--lr", type=float, default=BASE["lr"])
    parser.add_argument("--clip", type=float, default=1.0, help="dp-clip-norm of the DP rows")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "privacy-runs"), help="folder of the run folders")
    parser.add_argument("--tag", default="", help="names the runs and the results apart")
    args = parser.parse_args(argv)
    set_env_defaults()
    processes.install_signal_handlers()

    from fedra_core.data.digits import DIGITS_DOMAINS

    domains = tuple(DIGITS_DOMAINS)
    schedule = {"num-server-rounds": args.rounds, "lr": args.lr, "local-steps": args.local_steps}
    rows = noise_rows(args.targets, args.rounds)
    configs = {(row, seed): dp_config(row, z, seed, domains, Path(args.out), schedule, args.clip, args.tag)
               for row, z in rows.items() for seed in args.seeds}
    print(f"{len(configs)} runs, {args.jobs} at a time; noise multipliers {rows}", flush=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {key: pool.submit(_run_one, cfg, len(domains)) for key, cfg in configs.items()}
        done = {key: f.result() for key, f in futures.items()}
    per_row: dict[str, dict[str, Any]] = {}
    for (row, seed), run_dir in done.items():
        last = _records(run_dir)[-1]
        entry = per_row.setdefault(row, {"noise-multiplier": rows[row], "epsilon": last.get("epsilon", float("inf")), "average": {}})
        entry["average"][seed] = 100 * last["average"]
    table = format_table(
        ["row", "z", "epsilon (delta 1e-5)", "top-1 average (%)", "n"],
        [[row, f"{e['noise-multiplier']:.3f}", f"{e['epsilon']:.2f}", mean_sd(list(e["average"].values())), len(e["average"])]
         for row, e in per_row.items()],
    )
    print(table)
    suffix = schedule_suffix(schedule) + (f"-{args.tag}" if args.tag else "")
    path = write_results(f"privacy-accuracy{suffix}", {
        "setting": "feature", "assignment": "paper", "schedule": {**BASE, **schedule}, "clip-norm": args.clip,
        "delta": DELTA, "rows": per_row, "seeds": args.seeds, "table": table, "machine": machine(),
        "seconds": time.perf_counter() - start}, RESULTS_DIR / f"privacy-accuracy{suffix}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
