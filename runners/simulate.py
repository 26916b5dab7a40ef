"""Run a FedRA federation on Flower's simulation engine with ``flwr run``, and clean up after it.

``python -m runners.simulate --demo`` is what ``make demo`` runs: 6 simulated SuperNodes with
capacities 12,10,8,6,4,3 of the demo ViT on the offline digits benchmark (feature skew).

The launcher starts its own simulation SuperLink on free loopback ports (so it knows the process
to stop), points ``flwr run`` at it through a private ``FLWR_HOME``, streams the run's log, and
stops the SuperLink by process id at the end, also on Ctrl-C or SIGTERM; killed outright, it takes
the SuperLink along (``runners.processes``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedra_core.run_config import load_run_config
from runners import processes
from runners.cli import one_line_errors, parse_run_config
from server_app.app import check_new_run

REPO = Path(__file__).resolve().parent.parent

# The demo: enough rounds for FedRA to clearly beat the untuned model within the CPU time budget.
DEMO_RUN_CONFIG = {
    "num-server-rounds": 15,
    "local-steps": 20,
    "batch-size": 64,
    "lr": 0.05,
    "eval-every": 5,
    "run-name": "demo",
}


def free_port() -> int:
    """Return a free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until something listens on ``port``; raise RuntimeError if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def format_run_config(values: dict) -> str:
    """Return ``--run-config`` text (``k=v`` pairs, strings quoted as TOML) for ``values``."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif "'" not in str(value):
            text = f"'{value}'"  # TOML literal string: flwr's parser cannot read escaped quotes
        elif '"' not in str(value):
            text = f'"{value}"'
        else:
            raise ValueError(f"run-config value {value!r} of {key!r} holds both quote kinds, which flwr run cannot pass")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def run_simulation(
    run_config: dict,
    num_supernodes: int,
    cpus_per_client: int = 1,
    gpus_per_client: float = 0.0,
    flwr_home: Path | None = None,
    timeout: float | None = None,
) -> int:
    """Run the app in this repo on the simulation engine; return ``flwr run``'s exit code.

    The run config is validated first (a bad value stops here, before anything starts).
    """
    load_run_config(run_config)
    own_home = flwr_home is None
    home = Path(flwr_home or tempfile.mkdtemp(prefix="fedra-flwr-home-"))
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec, flwr-serverapp
    }
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedra-sim"\n\n[superlink.fedra-sim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    superlink = processes.start(
        [
            str(bin_dir / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
            "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation",
        ],
        env=env,
        cwd=REPO,
        stdout=open(home / "superlink.log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, superlink)
        federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client} client-resources-num-gpus={gpus_per_client}"
        command = [
            str(bin_dir / "flwr"), "run", str(REPO), "fedra-sim", "--stream",
            "--federation-config", federation, "--run-config", format_run_config(run_config),
        ]
        print("$ " + " ".join(shlex.quote(c) for c in command), flush=True)
        return processes.run(command, env=env, cwd=REPO, timeout=timeout).returncode
    finally:
        processes.stop(superlink)
        if own_home:
            shutil.rmtree(home, ignore_errors=True)


def prepare_assets(run_config: dict) -> None:
    """Build (or find cached) the dataset and backbone once, before the simulated nodes start."""
    from fedra_core.backbones import resolve_backbone
    from fedra_core.data.federation import client_shards, test_sets

    cfg = load_run_config(run_config)
    start = time.perf_counter()
    print(f"preparing the {cfg.dataset} data and the {cfg.backbone} backbone (built once and cached: the "
          "first run of the demo takes a few minutes here)...", flush=True)
    backbone = resolve_backbone(cfg.backbone_spec())
    test_sets(cfg.data_spec())
    shards = client_shards(cfg.data_spec())
    print(
        f"backbone {cfg.backbone} ({backbone.num_layers} blocks, fingerprint {backbone.fingerprint}) and "
        f"{len(shards)} data partitions ready in {time.perf_counter() - start:.0f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="the make-demo settings (6 nodes, digits, demo ViT)")
    parser.add_argument("--num-supernodes", type=int, default=6)
    parser.add_argument("--run-config", default="", help='overrides, e.g. "num-server-rounds=5 method=\'depthfl\'"')
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--gpus-per-client", type=float, default=0.0)
    parser.add_argument("--output-dir", default=str(REPO / "runs"))
    args = parser.parse_args(argv)
    processes.install_signal_handlers()  # SIGTERM and SIGINT stop the SuperLink and flwr run first
    return one_line_errors(lambda: _simulate(args))


def _simulate(args: argparse.Namespace) -> int:
    run_config = dict(DEMO_RUN_CONFIG) if args.demo else {}
    run_config["output-dir"] = str(Path(args.output_dir).resolve())
    overrides = parse_run_config(args.run_config)
    run_config.update(overrides)
    cfg = load_run_config(run_config)
    if args.demo and "run-name" not in overrides:
        run_config["run-name"] = free_run_name(Path(cfg.output_dir), cfg.run_name)
    elif cfg.run_name and not cfg.resume:
        check_new_run(Path(cfg.output_dir) / cfg.run_name, cfg.run_name)
    prepare_assets(run_config)
    code = run_simulation(run_config, args.num_supernodes, args.cpus_per_client, args.gpus_per_client)
    summary = Path(run_config["output-dir"]) / run_config.get("run-name", "") / "summary.md"
    if code == 0 and summary.is_file():
        print("\n" + summary.read_text())
    return code


def free_run_name(output_dir: Path, name: str) -> str:
    """Return ``name``, or ``name-2``, ``name-3``... when ``output_dir`` already holds a run of that
    name (an earlier demo is kept, never overwritten); print the name chosen."""
    chosen, n = name, 1
    while (output_dir / chosen).exists():
        n += 1
        chosen = f"{name}-{n}"
    if chosen != name:
        print(f"{output_dir / name} holds an earlier run (kept); this one goes to {output_dir / chosen}", flush=True)
    return chosen


if __name__ == "__main__":
    sys.exit(main())
