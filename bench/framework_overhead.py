"""Overhead of the framework: the same few FedRA rounds three ways, each in a fresh process.

* ``plain``: fedra_core only, one process, no Flower: per round ``allocate`` (the server's
  generator), ``build_trainable_model`` + ``load_trainable_state`` + ``train_local`` per client,
  ``aggregate_fedra``, evaluation of the full global model on every domain (the server does the
  same every round). Seeds, allocations, data and settings are those of the apps, so the accuracy
  must come out the same as the apps' (checked and reported).
* ``local``: ``python -m runners.local``: the real ServerApp logic and ClientApp in one process,
  messages delivered by function call (Flower records, validation, checkpoint, outputs; no Ray,
  no network).
* ``simulation``: ``python -m runners.simulate``: a SuperLink, ``flwr run``, Flower's simulation
  engine with Ray, ClientApps in Ray actors.

The config is the test suite's tiny run (``tests/app_helpers.py`` TINY_RUN, copied here): a 12-block
ViT of width 32 at 28x28 with seeded random weights, 3 nodes on mnist/printed/usps with capacities
12, 6, 3, 2 local steps of batch 16, 100 test images per domain. The local work is tiny on purpose:
what is left is the framework.

For each path the parent records the wall time, the moment each line of the run's
``metrics.jsonl`` appears (polled every 20 ms; line 0 is written after start-up, the backbone, the
test sets and the evaluation of the untuned model) and the per-round ``seconds`` the server writes
(round 1 includes the capacity query, i.e. the first start of the ClientApps). Start-up of
Ray/SuperLink is the extra time the simulation needs before round 0 and in round 1 beyond what the
in-process path needs.

Run from the repository root:  ``.venv/bin/python -m bench.framework_overhead``  (``--help``).
This costs about two minutes of a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench._common import BENCH_CACHE, load_avg, REPO, format_table, machine, set_env_defaults, write_results

# tests/conftest.py TINY_VIT and tests/app_helpers.py TINY_RUN (copied: tests/ is not a package)
TINY_VIT = dict(img_size=28, patch_size=7, in_chans=3, embed_dim=32, depth=12, num_heads=2, mlp_ratio=4.0)
TINY_RUN: dict[str, Any] = {
    "backbone": "vit",
    "backbone-kwargs": json.dumps(TINY_VIT),
    "backbone-weights": "random",
    "num-server-rounds": 3,
    "capacities": "12,6,3",
    "domains": "mnist,printed,usps",
    "local-steps": 2,
    "batch-size": 16,
    "eval-max-examples": 100,
    "lr": 0.05,
}
NUM_NODES = 3


def plain_worker(run_config: dict[str, Any], run_dir: Path) -> None:
    """Run the rounds with fedra_core only and write ``metrics.jsonl`` lines like the server's."""
    import numpy as np
    import torch

    from fedra_core import aggregate_fedra, allocate, build_trainable_model, client_keys, evaluate
    from fedra_core import load_trainable_state, resolve_backbone, train_local, trainable_state
    from fedra_core.data.federation import client_shards, client_train_data, test_sets
    from fedra_core.run_config import load_run_config
    from fedra_core.state import clone_state

    cfg = load_run_config(run_config)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    backbone = resolve_backbone(cfg.backbone_spec())
    spec, lora, method = cfg.data_spec(), cfg.lora(), cfg.method_settings()
    test = test_sets(spec, cfg.eval_max_examples)
    shards = client_shards(spec)
    torch.manual_seed(cfg.seed)
    server_model = build_trainable_model(backbone, range(backbone.num_layers), lora, method)
    global_state = clone_state(trainable_state(server_model))

    def accuracy(state: dict) -> dict[str, float]:
        load_trainable_state(server_model, state)
        return {d: evaluate(server_model, ds, cfg.eval_batch_size, bf16=cfg.bf16).accuracy for d, ds in test.items()}

    def write(record: dict) -> None:
        with metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    acc = accuracy(global_state)
    write({"round": 0, "seconds": 0.0, "accuracy": acc, "average": sum(acc.values()) / len(acc)})
    # one node per partition; capacities are per domain and the partitions are the domains, in order
    capacities = [cfg.capacities[i] for i in range(len(shards))]
    data = {}
    for server_round in range(1, cfg.num_server_rounds + 1):
        start = time.perf_counter()
        allocation = allocate(method, capacities, backbone.num_layers, np.random.default_rng([cfg.seed, server_round]))
        t_train = 0.0
        states = []
        for pid, row in enumerate(allocation):
            t0 = time.perf_counter()
            if pid not in data:  # a node loads its data once, as the ClientApp does
                data[pid] = client_train_data(spec, pid)[1]
            blocks = np.flatnonzero(row).tolist()
            model = build_trainable_model(backbone, blocks, lora, method)
            load_trainable_state(model, {k: global_state[k] for k in client_keys(global_state, blocks, method)})
            seed = (cfg.seed * 1_000_003 + server_round * 10_007 + pid) % 2**63
            train_local(model, data[pid], cfg.train_settings(0.0), "cpu", seed=seed)
            states.append({k: v.to("cpu") for k, v in trainable_state(model).items()})
            t_train += time.perf_counter() - t0
        t0 = time.perf_counter()
        global_state = aggregate_fedra(global_state, states, allocation)
        t_agg = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc = accuracy(global_state)
        t_eval = time.perf_counter() - t0
        write({"round": server_round, "seconds": round(time.perf_counter() - start, 3), "accuracy": acc,
               "average": sum(acc.values()) / len(acc), "train-seconds": t_train, "aggregate-seconds": t_agg,
               "eval-seconds": t_eval})
    print("[plain] last round written", flush=True)


class Watcher:
    """Timestamps (seconds since ``t0``) of the lines of a file as they appear and of a process's stdout lines."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path, self.t0 = path, t0
        self.line_times: list[float] = []
        self.stdout: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._check()
            time.sleep(0.02)

    def _check(self) -> None:
        try:
            text = self.path.read_text()
        except OSError:
            return
        n = text.count("\n")
        while len(self.line_times) < n:
            self.line_times.append(time.perf_counter() - self.t0)

    def read_stdout(self, stream: Iterable[str]) -> None:
        """Consume a process's stdout, timestamping every line (run in a thread)."""
        for line in stream:
            self.stdout.append((time.perf_counter() - self.t0, line.rstrip("\n")))

    def stop(self) -> None:
        """Stop polling (after a last check)."""
        self._stop.set()
        self._thread.join()
        self._check()


def run_path(name: str, command: list[str], run_dir: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one path in a fresh process; return its timings and the records it wrote."""
    t0 = time.perf_counter()
    watcher = Watcher(run_dir / "metrics.jsonl", t0)
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    reader = threading.Thread(target=watcher.read_stdout, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGINT first: runners.simulate stops the SuperLink it started on Ctrl-C (its finally block)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        raise RuntimeError(f"{name}: timed out after {timeout} s") from None
    wall = time.perf_counter() - t0
    reader.join(timeout=10)
    watcher.stop()
    if code != 0:
        tail = "\n".join(line for _, line in watcher.stdout[-40:])
        raise RuntimeError(f"{name}: exit code {code}\n{tail}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    launch = next((t for t, line in watcher.stdout if line.startswith("$ ") and " run " in line), None)
    return {"path": name, "command": command, "wall": wall, "line_times": watcher.line_times, "exit_code": code,
            "flwr_run_started": launch, "records": records,
            "last_stdout_line_at": watcher.stdout[-1][0] if watcher.stdout else None,
            "stdout": [[round(t, 3), line] for t, line in watcher.stdout]}


def summarise(res: dict[str, Any]) -> dict[str, float]:
    """Return the phases of one path: start-up to round 0, round 1, steady round, tail after the last round."""
    recs, times = res["records"], res["line_times"]
    seconds = [r["seconds"] for r in recs[1:]]
    gaps = [b - a for a, b in zip(times[1:], times[2:])]  # line-to-line, rounds 2..R
    steady = sum(seconds[1:]) / len(seconds[1:]) if len(seconds) > 1 else float("nan")
    steady_gap = sum(gaps) / len(gaps) if gaps else float("nan")
    return {
        "to_round0": times[0],
        "round1": seconds[0],
        "round1_gap": times[1] - times[0],
        "steady_round": steady,
        "steady_gap": steady_gap,
        "tail": res["wall"] - times[-1],
        "wall": res["wall"],
        "final_average": recs[-1].get("average", float("nan")),
    }


def report(results: dict[str, dict[str, Any]], rounds: int, cpus_per_client: int) -> dict[str, float]:
    """Print the table and the derived figures of the paths in ``results``; return the derived figures."""
    for res in results.values():
        res["phases"] = summarise(res)
    headers = ["path", "wall s", "start -> round 0 line s", "round seconds (1..R)", "round 1 s", "mean round s (2..R)",
               "line-to-line s (2..R)", "after last round s", "final avg accuracy"]
    rows = []
    for name, res in results.items():
        p = res["phases"]
        per_round = ", ".join(f"{r['seconds']:.2f}" for r in res["records"][1:])
        rows.append([name, f"{p['wall']:.1f}", f"{p['to_round0']:.1f}", per_round, f"{p['round1']:.2f}",
                     f"{p['steady_round']:.2f}", f"{p['steady_gap']:.2f}", f"{p['tail']:.1f}", f"{100 * p['final_average']:.2f}%"])
    print(f"\n{rounds} rounds, 3 nodes, tiny ViT (width 32, 12 blocks), 2 local steps of batch 16; "
          f"simulation with {cpus_per_client} CPU(s) per client:")
    print(format_table(headers, rows))
    derived: dict[str, float] = {}
    if "plain" in results:
        recs = results["plain"]["records"][1:]
        for key in ("train-seconds", "aggregate-seconds", "eval-seconds"):
            derived[f"plain_{key}_per_round"] = sum(r[key] for r in recs) / len(recs)
        print("plain loop per round: train {:.3f} s (3 clients), aggregate {:.4f} s, evaluate {:.3f} s".format(
            derived["plain_train-seconds_per_round"], derived["plain_aggregate-seconds_per_round"],
            derived["plain_eval-seconds_per_round"]))
    if "local" in results and "plain" in results:
        lp, pp = results["local"]["phases"], results["plain"]["phases"]
        derived["local_minus_plain_steady_round"] = lp["steady_round"] - pp["steady_round"]
        derived["local_minus_plain_steady_gap"] = lp["steady_gap"] - pp["steady_gap"]
        print(f"in-process Flower apps vs plain loop, per steady round: {derived['local_minus_plain_steady_round']:+.3f} s "
              f"(server 'seconds'), {derived['local_minus_plain_steady_gap']:+.3f} s (line to line, incl. checkpoint)")
    if "simulation" in results and "local" in results:
        sp, lp = results["simulation"]["phases"], results["local"]["phases"]
        before = sp["to_round0"] - lp["to_round0"]
        first = (sp["round1"] - sp["steady_round"]) - (lp["round1"] - lp["steady_round"])
        derived.update({
            "sim_extra_before_round0": before,
            "sim_extra_round1": first,
            "sim_startup_total": before + first,
            "sim_minus_local_steady_round": sp["steady_round"] - lp["steady_round"],
            "sim_extra_after_last_round": sp["tail"] - lp["tail"],
        })
        launch = results["simulation"]["flwr_run_started"]
        if launch is not None:
            derived["sim_launcher_to_flwr_run"] = launch
        print(f"simulation start-up (Ray, SuperLink, flwr run, ServerApp/ClientApp processes) beyond the in-process path: "
              f"{before:.1f} s before round 0 + {first:.1f} s extra in round 1 = {before + first:.1f} s; "
              f"per steady round {derived['sim_minus_local_steady_round']:+.2f} s; after the last round {derived['sim_extra_after_last_round']:+.1f} s"
              + (f"; `flwr run` started {launch:.1f} s after launch (SuperLink up)" if launch is not None else ""))
    if len(results) > 1:
        accs = {n: round(r["phases"]["final_average"], 6) for n, r in results.items()}
        derived["same_accuracy"] = float(len(set(accs.values())) == 1)
        print(f"final average accuracy per path: {accs} ({'identical' if len(set(accs.values())) == 1 else 'DIFFERENT'})")
    return derived


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description="One small FedRA run three ways: plain fedra_core loop, in-process Flower apps, flwr run simulation (Ray).")
    parser.add_argument("--rounds", type=int, default=3, help="server rounds (default: %(default)s; >= 2 to see the steady state)")
    parser.add_argument("--paths", default="plain,local,simulation", help="which paths to run (default: %(default)s)")
    parser.add_argument("--cpus-per-client", type=int, default=2,
                        help="Ray CPUs per simulated client (default: %(default)s = the whole 2-core machine: clients run one at a time "
                             "with 2 threads, like the other two paths)")
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds per path (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--cache", default=BENCH_CACHE, help="FEDRA_CACHE if unset")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/framework_overhead.json)")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a saved JSON again (runs nothing)")
    parser.add_argument("--plain-worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-config-json", default="", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    set_env_defaults(args.cache)
    if args.plain_worker is not None:
        plain_worker(json.loads(args.run_config_json), args.plain_worker)
        return 0
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        report(saved["results"], saved["rounds"], saved["cpus_per_client"])
        return 0
    host = machine()

    from runners.simulate import format_run_config, prepare_assets

    work = Path(tempfile.mkdtemp(prefix="fedra-bench-overhead-"))
    run_config = {**TINY_RUN, "num-server-rounds": args.rounds}
    start = time.perf_counter()
    prepare_assets({**run_config, "output-dir": str(work)})  # dataset and backbone cached before anything is timed
    assets_seconds = time.perf_counter() - start
    env = {**os.environ}
    py = sys.executable
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in args.paths.split(","):
            out_dir = work / name
            cfg = {**run_config, "output-dir": str(out_dir), "run-name": "run"}
            run_dir = out_dir / "run"
            if name == "plain":
                command = [py, "-m", "bench.framework_overhead", "--plain-worker", str(run_dir), "--run-config-json", json.dumps(cfg)]
            elif name == "local":
                command = [py, "-m", "runners.local", "--num-nodes", str(NUM_NODES), "--run-config", format_run_config(cfg)]
            elif name == "simulation":
                sim_cfg = {k: v for k, v in cfg.items() if k != "output-dir"}
                command = [py, "-m", "runners.simulate", "--num-supernodes", str(NUM_NODES), "--cpus-per-client",
                           str(args.cpus_per_client), "--output-dir", str(out_dir), "--run-config", format_run_config(sim_cfg)]
            else:
                raise SystemExit(f"unknown path {name!r}: use plain, local, simulation")
            print(f"running {name} ...", file=sys.stderr, flush=True)
            homes_before = set(Path(tempfile.gettempdir()).glob("fedra-flwr-home-*"))
            try:
                results[name] = run_path(name, command, run_dir, env, args.timeout)
            finally:
                # runners.simulate makes a private FLWR_HOME with mkdtemp and leaves it behind: remove ours
                for home in set(Path(tempfile.gettempdir()).glob("fedra-flwr-home-*")) - homes_before:
                    if not args.keep:
                        shutil.rmtree(home, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    derived = report(results, args.rounds, args.cpus_per_client)
    path = write_results("framework_overhead", {
        "machine": {**host, "load_avg_at_end": load_avg()}, "command": " ".join(["python -m bench.framework_overhead", *argv]),
        "run_config": run_config, "rounds": args.rounds, "cpus_per_client": args.cpus_per_client,
        "assets_seconds": assets_seconds, "results": results, "derived": derived,
    }, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
