"""Overhead of the framework: the same few FedRA rounds two ways, each in a fresh process.

* ``local``: ``python -m runners.local``: the real ServerApp logic and ClientApp in one process,
  messages delivered by function call (Flower records, validation, checkpoint, outputs; no Ray,
  no network).
* ``simulation``: ``python -m runners.simulate``: a SuperLink, ``flwr run``, Flower's simulation
  engine with Ray, ClientApps in Ray actors.

The engine's own work is what the ClientApps report in every reply (``t-train``, ``t-evaluate``:
building the sub-model, training or evaluating); what a round costs beyond it is the framework
(messages, validation, aggregation, checkpoint, outputs), so no second copy of the round loop is
needed to measure it.

The config is the test suite's tiny run (``bench._common.TINY_RUN``): a 12-block
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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench._common import BENCH_CACHE, REPO, TINY_RUN, format_table, load_avg, machine, set_env_defaults, write_results
from runners import processes

NUM_NODES = 3


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
    proc = processes.start(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=watcher.read_stdout, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        processes.stop(proc, grace=60)  # the run, its SuperLink and all under it: SIGTERM, 60 s, SIGKILL
        raise RuntimeError(f"{name}: timed out after {timeout} s") from None
    processes.stop(proc)  # it ended: only what it may have left behind
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


def engine_seconds(record: dict[str, Any]) -> float:
    """Return the engine's work in a round: the nodes' reported training and evaluation times."""
    total = 0.0
    for key, phase in (("train-timings", "train"), ("eval-timings", "evaluate")):
        total += sum(times.get(phase, 0.0) for times in record.get(key, {}).values())
    return total


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
    if "local" in results:
        recs = results["local"]["records"][2:]  # steady rounds: the first one also starts the ClientApps
        engine = [engine_seconds(r) for r in recs]
        if recs:
            derived["local_engine_per_round"] = sum(engine) / len(engine)
            derived["local_framework_per_round"] = sum(r["seconds"] - e for r, e in zip(recs, engine)) / len(recs)
            print(f"in-process apps per steady round: engine work (the nodes' t-train + t-evaluate) "
                  f"{derived['local_engine_per_round']:.3f} s, framework (messages, validation, aggregation, "
                  f"outputs) {derived['local_framework_per_round']:.3f} s")
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
    parser = argparse.ArgumentParser(description="One small FedRA run two ways: in-process Flower apps, flwr run simulation (Ray).")
    parser.add_argument("--rounds", type=int, default=3, help="server rounds (default: %(default)s; >= 2 to see the steady state)")
    parser.add_argument("--paths", default="local,simulation", help="which paths to run (default: %(default)s)")
    parser.add_argument("--cpus-per-client", type=int, default=2,
                        help="Ray CPUs per simulated client (default: %(default)s = the whole 2-core machine: clients run one at a time "
                             "with 2 threads, like the other two paths)")
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds per path (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--cache", default=BENCH_CACHE, help="FEDRA_CACHE if unset")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/framework_overhead.json)")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a saved JSON again (runs nothing)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    processes.install_signal_handlers()  # SIGTERM and SIGINT stop the run in progress and all it started
    set_env_defaults(args.cache)
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
            if name == "local":
                command = [py, "-m", "runners.local", "--num-nodes", str(NUM_NODES), "--run-config", format_run_config(cfg)]
            elif name == "simulation":
                sim_cfg = {k: v for k, v in cfg.items() if k != "output-dir"}
                command = [py, "-m", "runners.simulate", "--num-supernodes", str(NUM_NODES), "--cpus-per-client",
                           str(args.cpus_per_client), "--output-dir", str(out_dir), "--run-config", format_run_config(sim_cfg)]
            else:
                raise SystemExit(f"unknown path {name!r}: use local, simulation")
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
