"""Helpers shared by the benchmark scripts: environment defaults, machine description, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


BENCH_CACHE = str(Path(tempfile.gettempdir()) / "bench-cache")

# The tiny run of the tests and the overhead benchmark (one definition; tests/app_helpers.py imports
# it): a 12-block ViT of width 32 at 28x28 with seeded random weights, 3 nodes on three digits
# domains with capacities 12, 6, 3, 2 local steps of batch 16, 100 test images per domain.
TINY_VIT: dict[str, Any] = dict(img_size=28, patch_size=7, in_chans=3, embed_dim=32, depth=12, num_heads=2, mlp_ratio=4.0)
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


def set_env_defaults(cache: str = BENCH_CACHE) -> None:
    """Set the offline / no-install environment the benchmarks run under, unless the caller set it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("FEDRA_CACHE", cache)


def machine() -> dict[str, Any]:
    """Return a short description of this machine (CPU model, cores, memory, Python, torch, flwr) and
    its load average (1, 5, 15 min) at the time of the call; the scripts call it when they start."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "load_avg_at_start": load_avg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import flwr

        info["flwr"] = flwr.__version__
    except ImportError:
        pass
    return info


def load_avg() -> list[float]:
    """Return the 1, 5 and 15 minute load averages (other people's jobs share this machine)."""
    return [round(x, 2) for x in os.getloadavg()]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a Markdown table with right-aligned columns (floats already formatted by the caller)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def portable(value: Any) -> Any:
    """Return ``value`` with this machine's paths in every string replaced by placeholders: the
    repository by ".", the temporary folder by "$TMPDIR" and the home folder by "~" (results are
    committed, and these say nothing about the figures)."""
    if isinstance(value, str):
        for prefix, placeholder in ((str(REPO), "."), (tempfile.gettempdir(), "$TMPDIR"), (str(Path.home()), "~")):
            value = value.replace(prefix, placeholder)
        return value
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    return value


def write_results(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``payload`` (machine paths made portable) as indented JSON to ``out`` (default
    ``bench/results/<name>.json``); return the path."""
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(portable(payload), indent=2) + "\n")
    return path


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Run ``fn`` ``repeats`` times; return the wall time of each run in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    """Return the median of ``values``."""
    return float(statistics.median(values))


MB = 1e6
MIB = 2**20
