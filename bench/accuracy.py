"""Accuracy benchmark on the offline digits benchmark: FedRA and its options against ALLlarge,
ALLsmall, InclusiveFL and DepthFL, in three heterogeneity settings and several capacity assignments,
with paired statistics over seeds.

**What runs.** A table row is a *variant*: a label, a registered method and run-config overrides
(``VARIANTS``: one row per method with no overrides, plus FedRA options such as ``fedra-cover`` or
``fedra-calib`` and reference-code variants such as ``depthfl-ref-ramp``). Every (setting,
assignment, row, seed) is one federation through the real ServerApp and ClientApp logic in one
process (``runners.local``, no Ray), several in parallel worker processes. Assignments
(``ASSIGNMENTS``) say which domain gets which capacity: ``paper`` gives the setting's capacities to
the domains in the dataset's own domain order (as the FedRA reference code gives ``--net_type
[12,10,8,6,4,3]`` to DomainNet's domains in list order), ``rich-easy`` the largest to the easiest
domain, ``rich-hard`` the largest to the hardest. ALLlarge and ALLsmall ignore who holds which
capacity, so their rows run once per (setting, seed) under the assignment name ``any`` and that run
is shown in every assignment's table; settings that differ only in the capacities above the smallest
(``extreme`` and ``feature``) share them too. Finished runs are reused (a run whose saved config differs
from the one asked for stops the command), so the command can be stopped and started again.

**How to read the tables.** One markdown table per (setting, assignment): the untuned round-0 model
first, then each row's final top-1 (%) per domain and averaged over the domains, as mean ± sample
standard deviation (ddof = 1) over seeds ("n/a" with one seed), and ``n`` the number of seeds. Each
reference row (``--reference``: ``fedra`` and ``best-option``, the ``fedra-*`` row with the highest
mean average in that table) adds a column "<ref> − row": the mean over seeds of the reference's
average minus the row's, paired by seed (same data split, same test images; only seeds present in
both rows count), its 95 % confidence interval from the t distribution with n − 1 degrees of freedom,
the paired t-test p value, and a verdict: ``win`` when the interval lies entirely above 0 (the
reference is better), ``loss`` entirely below, ``tie`` otherwise; "n/a" below two paired seeds.
Positive means the reference is better. The number of comparisons is printed per table and in total;
no multiple-comparison correction is applied to the intervals, p values or verdicts in the tables.
Holm's correction is computed over the family ``--family`` states: ``all`` (the default), every
comparison with a p value that the command makes (all its tables; per table: each ``--reference`` row
that is in ``--rows`` against every other row, a pair counted once); ``table``, one family per table;
or ``REF:ROW`` pairs, just those pairs in every table. For each member: the adjusted p value
``p_holm``, the Holm-adjusted interval (``lo_holm``, ``hi_holm``: the comparison ranked i-th (1-based)
of m by p value gets the t interval at confidence level ``level_holm`` = 1 − alpha/(m − i + 1), alpha
``--alpha``, 0.05 by default) and ``verdict_holm`` ("win" when p_holm < alpha and the adjusted interval
lies above 0, "loss" when p_holm < alpha and it lies below, "tie" otherwise); they are kept in the JSON
(with the family, ``stats.family`` and ``stats.families``) and printed after the tables. The
``best-option`` reference is chosen by looking at the same data it is tested on, so its wins are
optimistic; read them as "the best option found", not as a pre-registered hypothesis.

**Outputs.** ``bench/results/accuracy[-<settings>][<schedule>][-<tag>].json`` (raw per-seed numbers
per row, the rows' overrides, the capacity maps, the statistics, the tables, the elapsed seconds)
and ``accuracy-<setting>[<schedule>][-<tag>].png`` (one panel per assignment, mean curve over seeds
per row). Run folders go to ``bench/results/accuracy-runs/<setting>-<assignment>-<row>-s<seed>...``.

    python -m bench.accuracy --seeds 0 1 2 --jobs 2
    python -m bench.accuracy --settings feature --rows fedra fedra-calib alllarge --weights FILE --tag full
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench._common import RESULTS_DIR, machine, write_results
from fedra_core.methods import method_names
from runners import processes

METHODS = method_names()  # the registry's order: FedRA first, then the baselines


class Variant(NamedTuple):
    """One table row: the registered method it runs and the run-config keys it sets (kebab-case)."""

    method: str
    overrides: dict[str, Any]


_LEGACY_LORA = {"lora-targets": "attn.proj,mlp.fc2", "train-norm": True}
VARIANTS: dict[str, Variant] = {
    **{m: Variant(m, {}) for m in METHODS},
    "fedra-cover": Variant("fedra", {"allocation": "cover"}),
    "fedra-last": Variant("fedra", {"allocation": "last"}),
    "fedra-calib": Variant("fedra", {"head-calibration-steps": 8}),
    "fedra-calib-last": Variant("fedra", {"head-calibration-steps": 8, "allocation": "last"}),
    "depthfl-ref-ramp": Variant("depthfl", {"depthfl-ramp-rounds": 500}),
    "fedra-legacy-lora": Variant("fedra", dict(_LEGACY_LORA)),
    "alllarge-legacy-lora": Variant("alllarge", dict(_LEGACY_LORA)),
}
DEFAULT_ROWS: tuple[str, ...] = (*METHODS, "fedra-cover", "fedra-last", "fedra-calib", "fedra-calib-last")
# Methods whose runs do not depend on which domain holds which capacity: run once, shown everywhere.
ASSIGNMENT_FREE = frozenset({"alllarge", "allsmall"})
SHARED = "any"  # the assignment name of those shared runs
UNTUNED = "untuned (round 0)"
BEST_OPTION = "best-option"  # --reference token: the fedra-* row with the highest mean average

# Domains from easiest to hardest for the demo backbone (pre-trained on MNIST digits): measured by the
# accuracy of a model trained on MNIST alone on each domain (see README, digits benchmark).
EASY_TO_HARD = ("mnist", "usps", "optdigits", "mnistm", "printed", "housenum")
ASSIGNMENTS: dict[str, str] = {
    "paper": "capacities in the dataset's own domain order (DIGITS_DOMAINS), as the FedRA reference code's --net_type",
    "rich-easy": "largest capacity on the easiest domain (EASY_TO_HARD order)",
    "rich-hard": "largest capacity on the hardest domain (EASY_TO_HARD reversed)",
}
SETTINGS = {
    # one client per domain, capacities as in the paper
    "feature": {"capacities": [12, 10, 8, 6, 4, 3], "partitioning": "feature"},
    # several clients per domain with Dirichlet(0.5) labels; one client per domain trains each round
    "feature-label": {"capacities": [12, 10, 8, 6, 4, 3], "partitioning": "feature-label", "clients-per-domain": 3,
                      "dirichlet-alpha": 0.5, "client-sampling": "per-domain"},
    # nobody can hold the whole model
    "extreme": {"capacities": [6, 6, 4, 4, 3, 3], "partitioning": "feature"},
}
BASE = {"num-server-rounds": 30, "local-steps": 8, "batch-size": 64, "lr": 0.05, "eval-every": 5}
# BASE keys the command line may change, and the tag each adds to the run names when it departs from BASE
SCHEDULE_TAGS = {"num-server-rounds": "r", "lr": "lr", "local-steps": "ls"}
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def schedule_suffix(schedule: Mapping[str, Any]) -> str:
    """Return the name suffix of runs whose schedule departs from BASE (``-r10-lr0.1-ls16``), or "" for
    BASE itself; ``schedule`` may only hold the keys of ``SCHEDULE_TAGS``."""
    unknown = set(schedule) - set(SCHEDULE_TAGS)
    if unknown:
        raise ValueError(f"schedule keys {sorted(unknown)} cannot name a run: allowed {list(SCHEDULE_TAGS)}")
    return "".join(f"-{tag}{schedule[k]}" for k, tag in SCHEDULE_TAGS.items() if schedule.get(k, BASE[k]) != BASE[k])


def capacity_map(setting: str, assignment: str, domains: Sequence[str]) -> dict[str, int]:
    """Return {domain: capacity} for ``assignment`` (a key of ``ASSIGNMENTS``, or ``"any"``, which gives
    the ``paper`` map to the runs that ignore the assignment)."""
    caps = SETTINGS[setting]["capacities"]
    if assignment in ("paper", SHARED):
        order = list(domains)
    elif assignment in ("rich-easy", "rich-hard"):
        order = [d for d in EASY_TO_HARD if d in domains]
        if assignment == "rich-hard":
            order = order[::-1]
    else:
        raise ValueError(f"unknown assignment {assignment!r}: allowed {list(ASSIGNMENTS)}")
    if len(order) != len(domains) or len(caps) != len(domains):
        raise ValueError(f"{setting}/{assignment}: {len(caps)} capacities for domains {list(domains)} "
                         f"(easy-to-hard order known for {list(EASY_TO_HARD)})")
    return dict(zip(order, caps))


def run_assignment(row: str, assignment: str) -> str:
    """Return the assignment a row's run is made and named under: ``"any"`` for ALLlarge and ALLsmall
    rows (they ignore who holds which capacity), ``assignment`` otherwise."""
    return SHARED if VARIANTS[row].method in ASSIGNMENT_FREE else assignment


def run_setting(row: str, setting: str) -> str:
    """Return the setting a row's run is made and named under: for ALLlarge and ALLsmall the first
    setting in ``SETTINGS`` order with the same data and the same smallest capacity (they ignore the
    rest of the capacities, so ``extreme`` shows ``feature``'s runs), ``setting`` otherwise."""
    if VARIANTS[row].method not in ASSIGNMENT_FREE:
        return setting

    def key(name: str) -> tuple:
        spec = SETTINGS[name]
        return min(spec["capacities"]), sorted((k, str(v)) for k, v in spec.items() if k != "capacities")

    return next(name for name in SETTINGS if key(name) == key(setting))


def run_name(setting: str, assignment: str, row: str, seed: int, schedule: Mapping[str, Any] | None = None,
             tag: str = "") -> str:
    """Return the run folder name ``<setting>-<assignment>-<row>-s<seed>[<schedule>][-<tag>]``, with the
    assignment replaced by ``"any"`` and the setting by ``run_setting`` for rows that ignore them."""
    name = f"{run_setting(row, setting)}-{run_assignment(row, assignment)}-{row}-s{seed}{schedule_suffix(schedule or {})}"
    return f"{name}-{tag}" if tag else name


def run_config(setting: str, assignment: str, row: str, seed: int, domains: Sequence[str], out: Path,
               schedule: Mapping[str, Any] | None = None, tag: str = "") -> dict[str, Any]:
    """Return the run config of one benchmark run: BASE, the schedule overrides (``SCHEDULE_TAGS`` keys,
    they name the run), the setting, the row's overrides, its method, the seed and the capacities of
    the assignment in the order of ``domains``."""
    schedule = dict(schedule or {})
    variant = VARIANTS[row]
    made_as = run_setting(row, setting)
    spec = {k: v for k, v in SETTINGS[made_as].items() if k != "capacities"}
    by_domain = capacity_map(made_as, run_assignment(row, assignment), domains)
    return {**BASE, **schedule, **spec, **variant.overrides, "method": variant.method, "seed": seed,
            "domains": ",".join(domains), "capacities": ",".join(str(by_domain[d]) for d in domains),
            "output-dir": str(out), "run-name": run_name(setting, assignment, row, seed, schedule, tag)}


def num_nodes(cfg: Mapping[str, Any], domains: Sequence[str]) -> int:
    """Return the number of nodes a run config needs: one per domain, times clients-per-domain under
    feature & label skew."""
    per_domain = int(cfg.get("clients-per-domain", 1)) if cfg["partitioning"] != "feature" else 1
    return len(domains) * per_domain


def plan_runs(settings: Sequence[str], assignments: Sequence[str], rows: Sequence[str], seeds: Sequence[int],
              domains: Sequence[str], out: Path, schedule: Mapping[str, Any] | None = None, weights: str = "default",
              tag: str = "") -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, str, int], str]]:
    """Return the runs to make, {run name: run config}, and the table cell each (setting, assignment,
    row, seed) reads, {key: run name}; shared runs (ALLlarge, ALLsmall) appear once in the first and
    under every assignment in the second."""
    configs: dict[str, dict[str, Any]] = {}
    cells: dict[tuple[str, str, str, int], str] = {}
    # seed by seed, so that a command stopped early leaves complete paired seeds
    for seed in seeds:
        for setting in settings:
            for assignment in assignments:
                for row in rows:
                    cfg = {**run_config(setting, assignment, row, seed, domains, out, schedule, tag),
                           "backbone-weights": weights}
                    configs.setdefault(cfg["run-name"], cfg)
                    cells[(setting, assignment, row, seed)] = cfg["run-name"]
    return configs, cells


def _normalise(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, (list, tuple)):
        return ",".join(_normalise(v) for v in value)
    parts = [p.strip() for p in str(value).split(",")]  # "12,10" as the run config's [12, 10]
    return ",".join(_normalise(float(p)) if re.fullmatch(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?", p) else p for p in parts)


def stale_keys(cfg: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
    """Return the keys of the run config ``cfg`` that a finished run's saved ``config.json`` lacks or
    holds with another value (lists compared as comma-separated text, numbers as floats, so "12,10"
    matches [12, 10] and 8 matches 8.0); the output
    folder and the run name are not compared."""
    return [k for k, v in cfg.items()
            if k not in ("output-dir", "run-name") and (k not in saved or _normalise(saved[k]) != _normalise(v))]


def _run_one(cfg: dict[str, Any], nodes: int) -> Path:
    run_dir = Path(cfg["output-dir"]) / cfg["run-name"]
    if (run_dir / "summary.md").is_file():
        saved_path = run_dir / "config.json"
        if saved_path.is_file():
            stale = stale_keys(cfg, json.loads(saved_path.read_text()))
            if stale:
                raise RuntimeError(f"{run_dir} was run with another config ({', '.join(stale)}); remove it or "
                                   "name the new runs apart with --tag")
        return run_dir
    if run_dir.exists():  # an interrupted run of ours: continue it from its checkpoint, else start it again
        if (run_dir / "checkpoint.safetensors").is_file():
            cfg = {**cfg, "resume": True}
        else:
            shutil.rmtree(run_dir)
    from runners.simulate import format_run_config

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "runners.local", "--num-nodes", str(nodes), "--run-config", format_run_config(cfg)]
    start = time.perf_counter()
    log = run_dir.parent / f"{cfg['run-name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        processes.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)  # stopped with this process
    print(f"  done {cfg['run-name']} in {time.perf_counter() - start:.0f} s", flush=True)
    return run_dir


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _position(order: Sequence[str], item: str) -> tuple[int, str]:
    return (order.index(item), "") if item in order else (len(order), item)


def summarise(runs: Mapping[tuple[str, str, str, int], Path], domains: Sequence[str]) -> dict[str, Any]:
    """Return ``{setting: {assignment: {"rows": {row: {"seeds", "runs", <domain>..., "average"}},
    "curves": {row: {round: [per seed]}}}}}`` from finished runs keyed by (setting, assignment, row,
    seed): accuracies in %, lists in seed order, rows in ``VARIANTS`` order after the untuned round-0
    row. The untuned row takes, per seed, the round-0 evaluation of the first row in ``VARIANTS`` order
    without overrides that evaluates the whole model (not ALLsmall), else of any row."""
    out: dict[str, Any] = {}
    labels = list(VARIANTS)

    def order(key: tuple[str, str, str, int]) -> tuple:
        setting, assignment, row, seed = key
        return (_position(list(SETTINGS), setting), _position(list(ASSIGNMENTS), assignment), _position(labels, row), seed)

    untuned: dict[tuple[str, str], dict[int, tuple]] = {}
    for key in sorted(runs, key=order):
        setting, assignment, row, seed = key
        run_dir = runs[key]
        evals = [r for r in _records(run_dir) if "accuracy" in r]
        if not evals:
            raise ValueError(f"{run_dir}: no evaluation in metrics.jsonl")
        table = out.setdefault(setting, {}).setdefault(assignment, {"rows": {}, "curves": {}})
        cells = table["rows"].setdefault(row, {"seeds": [], "runs": []})
        cells["seeds"].append(seed)
        cells["runs"].append(run_dir.name)
        final = evals[-1]
        for d in domains:
            cells.setdefault(d, []).append(100 * final["accuracy"][d])
        cells.setdefault("average", []).append(100 * final["average"])
        curve = table["curves"].setdefault(row, {})
        for rec in evals:
            curve.setdefault(rec["round"], []).append(100 * rec["average"])
        if evals[0]["round"] == 0:
            variant = VARIANTS.get(row)
            whole = variant is not None and not variant.overrides and variant.method != "allsmall"
            rank = (0 if whole else 1, _position(labels, row))
            best = untuned.setdefault((setting, assignment), {}).get(seed)
            if best is None or rank < best[0]:
                untuned[(setting, assignment)][seed] = (rank, row, evals[0])
    for (setting, assignment), by_seed in untuned.items():
        cells = {"seeds": [], "from": []}
        for seed in sorted(by_seed):
            _, row, rec = by_seed[seed]
            cells["seeds"].append(seed)
            cells["from"].append(row)
            for d in domains:
                cells.setdefault(d, []).append(100 * rec["accuracy"][d])
            cells.setdefault("average", []).append(100 * rec["average"])
        table = out[setting][assignment]
        table["rows"] = {UNTUNED: cells, **table["rows"]}
    return out


def mean_sd(values: Sequence[float]) -> str:
    """Return ``"<mean> ± <sample sd>"`` (ddof = 1, one decimal), with "n/a" for the spread of one value."""
    if len(values) < 2:
        return f"{float(np.mean(values)):.1f} ± n/a"
    return f"{float(np.mean(values)):.1f} ± {float(np.std(values, ddof=1)):.1f}"


def pair_by_seed(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list[int], list[float], list[float]]:
    """Return the seeds present in both {seed: value} maps (sorted) and the two value lists in that order."""
    seeds = sorted(set(a) & set(b))
    return seeds, [a[s] for s in seeds], [b[s] for s in seeds]


def paired_stats(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Return the paired comparison of ``a`` and ``b`` (equal length, paired by position):
    ``mean`` of a − b, ``sd`` its sample standard deviation (ddof = 1), the 95 % confidence interval
    ``lo``, ``hi`` = mean ∓ t(0.975, n − 1)·sd/√n, the paired t statistic ``t`` and two-sided p value
    ``p`` (``scipy.stats.ttest_rel``), ``n``, and ``verdict``: "win" when lo > 0, "loss" when hi < 0,
    "tie" otherwise, "n/a" (and None for the figures but the mean) when n < 2. With identical
    differences (sd 0, or below 1e-9 of the mean: rounding) the interval is the point itself, p is 0 (1
    when they are all 0) and t None."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples of unequal length {len(a)} and {len(b)}")
    diffs = np.subtract(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    n = len(diffs)
    if n < 2:
        return {"n": n, "mean": float(diffs.mean()) if n else None, "sd": None, "lo": None, "hi": None,
                "t": None, "p": None, "verdict": "n/a"}
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    if sd <= 1e-9 * max(1.0, abs(mean)):  # equal differences up to rounding: scipy's t would be noise
        sd = 0.0
        mean = 0.0 if abs(mean) <= 1e-9 else mean
    half = t_half_width(sd, n, 0.95)
    if sd > 0:
        result = stats.ttest_rel(a, b)
        t, p = float(result.statistic), float(result.pvalue)
    else:
        t, p = None, (0.0 if mean != 0 else 1.0)
    lo, hi = mean - half, mean + half
    verdict = "win" if lo > 0 else "loss" if hi < 0 else "tie"
    return {"n": n, "mean": mean, "sd": sd, "lo": lo, "hi": hi, "t": t, "p": p, "verdict": verdict}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Return Holm's step-down adjusted p values, in the order given: the i-th smallest (from 0) of m is
    multiplied by m − i, then made non-decreasing in that order and capped at 1."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for i, k in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        adjusted[k] = running
    return adjusted


FAMILY_ALL, FAMILY_TABLE = "all", "table"


def parse_family(tokens: Sequence[str]) -> str | list[tuple[str, str]]:
    """Return the Holm family named on the command line: ``"all"`` (every comparison of the command, one
    family), ``"table"`` (each table's comparisons, one family per table) or a list of row pairs from
    ``REF:ROW`` tokens (one family: those pairs in every table, matched in either order)."""
    tokens = list(tokens)
    if tokens in ([FAMILY_ALL], [FAMILY_TABLE]):
        return tokens[0]
    pairs = []
    for token in tokens:
        parts = token.split(":")
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise ValueError(f"--family: {token!r} is not REF:ROW (two different rows), nor 'all' or 'table' alone")
        unknown = [x for x in parts if x not in VARIANTS]
        if unknown:
            raise ValueError(f"--family: unknown rows {unknown} in {token!r}")
        if frozenset(parts) in {frozenset(p) for p in pairs}:
            raise ValueError(f"--family: {token!r} given twice")
        pairs.append((parts[0], parts[1]))
    return pairs


def check_family(family: str | Sequence[tuple[str, str]], rows: Sequence[str], references: Sequence[str]) -> None:
    """Raise ValueError unless every pair of an explicit family is a comparison the command makes: both
    rows are run and one of them is an explicit ``--reference`` (not ``best-option``, chosen from the data)."""
    if isinstance(family, str):
        return
    for a, b in family:
        missing = [x for x in (a, b) if x not in rows]
        if missing:
            raise ValueError(f"--family {a}:{b}: rows {missing} are not in --rows")
        if a not in references and b not in references:
            raise ValueError(f"--family {a}:{b}: neither row is a --reference, so the pair is not compared")


def t_half_width(sd: float, n: int, level: float) -> float:
    """Return the half width t((1 + level)/2, n − 1)·sd/√n of the two-sided t interval at confidence
    ``level`` for the mean of ``n`` paired differences with sample standard deviation ``sd``."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Return the confidence level of each Holm-adjusted interval, in the order given: the comparison
    ranked i-th (1-based, by p value; equal p values keep the order given, as in :func:`holm`) of m gets
    1 − alpha/(m − i + 1), i.e. the smallest p value 1 − alpha/m and the largest 1 − alpha."""
    m = len(pvalues)
    levels = [0.0] * m
    for i, k in enumerate(sorted(range(m), key=lambda j: pvalues[j]), start=1):
        levels[k] = 1 - alpha / (m - i + 1)
    return levels


def holm_adjust(comparisons: Sequence[dict[str, Any]], alpha: float = 0.05) -> None:
    """Add Holm's correction over ``comparisons`` (the family; each with ``mean``, ``sd``, ``n`` >= 2 and
    ``p`` from :func:`paired_stats`) to each in place: ``p_holm`` (:func:`holm`), ``level_holm``
    (:func:`holm_levels`), the adjusted interval ``lo_holm``, ``hi_holm`` = mean ∓ t_half_width(sd, n,
    level_holm), and ``verdict_holm``: "win" when p_holm < alpha and lo_holm > 0, "loss" when p_holm <
    alpha and hi_holm < 0, "tie" otherwise. The p_holm condition is Holm's step-down: a comparison ranked
    after one that was not significant is not significant, even if its own adjusted interval excludes 0
    (whenever p_holm < alpha the adjusted interval excludes 0)."""
    pvalues = [c["p"] for c in comparisons]
    for c, p, level in zip(comparisons, holm(pvalues), holm_levels(pvalues, alpha)):
        half = t_half_width(c["sd"], c["n"], level)
        lo, hi = c["mean"] - half, c["mean"] + half
        verdict = "win" if p < alpha and lo > 0 else "loss" if p < alpha and hi < 0 else "tie"
        c.update(p_holm=p, level_holm=level, lo_holm=lo, hi_holm=hi, verdict_holm=verdict)


def format_holm(c: Mapping[str, Any]) -> str:
    """Return a Holm line, e.g. ``fedra − depthfl: +1.5 [+0.2, +2.8] (99.3 % interval) p_holm=0.041 win``."""
    p = "p_holm<0.001" if c["p_holm"] < 0.001 else f"p_holm={c['p_holm']:.3f}"
    return (f"{c['reference']} − {c['row']}: {c['mean']:+.1f} [{c['lo_holm']:+.1f}, {c['hi_holm']:+.1f}] "
            f"({100 * c['level_holm']:.1f} % interval) {p} {c['verdict_holm']}")


def format_comparison(s: Mapping[str, Any]) -> str:
    """Return a comparison cell, e.g. ``+1.8 [+0.9, +2.7] p=0.004 win`` (``p<0.001`` below that), or
    "n/a" when fewer than two seeds were paired."""
    if s["verdict"] == "n/a":
        return "n/a"
    p = "p<0.001" if s["p"] < 0.001 else f"p={s['p']:.3f}"
    return f"{s['mean']:+.1f} [{s['lo']:+.1f}, {s['hi']:+.1f}] {p} {s['verdict']}"


def best_option(rows: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Return the row labelled ``fedra-*`` with the highest mean average over seeds, or None."""
    options = [r for r in rows if r.startswith("fedra-")]
    return max(options, key=lambda r: float(np.mean(rows[r]["average"])), default=None)


def resolve_references(rows: Mapping[str, Mapping[str, Any]], references: Sequence[str]) -> list[str]:
    """Return the reference rows of one table: each of ``references`` present in ``rows``, with
    ``"best-option"`` replaced by :func:`best_option`, without repeats."""
    resolved: list[str] = []
    for ref in references:
        label = best_option(rows) if ref == BEST_OPTION else ref
        if label is not None and label in rows and label != UNTUNED and label not in resolved:
            resolved.append(label)
    return resolved


def table_stats(rows: Mapping[str, Mapping[str, Any]], references: Sequence[str]) -> dict[str, Any]:
    """Return ``{"references": [...], "comparisons": [{"reference", "row", "seeds", **paired_stats}]}``
    for one table: every reference against every other row but the untuned one, on the average over the
    domains, paired by seed; a pair already compared the other way round is not repeated."""
    refs = resolve_references(rows, references)
    comparisons = []
    done: set[frozenset[str]] = set()
    for ref in refs:
        ref_values = dict(zip(rows[ref]["seeds"], rows[ref]["average"]))
        for row, cells in rows.items():
            if row in (ref, UNTUNED) or frozenset((ref, row)) in done:
                continue
            done.add(frozenset((ref, row)))
            seeds, a, b = pair_by_seed(ref_values, dict(zip(cells["seeds"], cells["average"])))
            comparisons.append({"reference": ref, "row": row, "seeds": seeds, **paired_stats(a, b)})
    return {"references": refs, "comparisons": comparisons}


def family_label(family: str | Sequence[tuple[str, str]]) -> str:
    """Return the family as the JSON and the printed tables state it."""
    if family == FAMILY_ALL:
        return "all comparisons of the command"
    if family == FAMILY_TABLE:
        return "each table's comparisons (one family per table)"
    return "the pairs " + ", ".join(f"{a}:{b}" for a, b in family) + " in every table"


def compute_stats(summary: Mapping[str, Any], references: Sequence[str],
                  family: str | Sequence[tuple[str, str]] = FAMILY_ALL, alpha: float = 0.05) -> dict[str, Any]:
    """Return the statistics of every table (:func:`table_stats`) under ``"tables"`` ({setting:
    {assignment: ...}}), the number of comparisons with a p value per table (``"per_table"``, keyed
    ``setting/assignment``) and in ``"total"``, the ``"correction"`` applied and the Holm ``"family"``
    (see :func:`parse_family`; ``"families"`` lists each family's members as ``setting/assignment
    ref − row``). Each tested comparison in a family gets :func:`holm_adjust`'s ``p_holm``,
    ``level_holm``, ``lo_holm``, ``hi_holm`` and ``verdict_holm`` at ``alpha``; one outside every family
    gets none of them."""
    tables: dict[str, Any] = {}
    per_table: dict[str, int] = {}
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    total = 0
    wanted = None if isinstance(family, str) else {frozenset(p) for p in family}
    for setting, by_assignment in summary.items():
        for assignment, table in by_assignment.items():
            result = table_stats(table["rows"], references)
            tables.setdefault(setting, {})[assignment] = result
            made = [c for c in result["comparisons"] if c["p"] is not None]
            per_table[f"{setting}/{assignment}"] = len(made)
            total += len(made)
            group = f"{setting}/{assignment}" if family == FAMILY_TABLE else "family"
            for c in made:
                if wanted is None or frozenset((c["reference"], c["row"])) in wanted:
                    groups.setdefault(group, []).append((f"{setting}/{assignment} {c['reference']} − {c['row']}", c))
    for members in groups.values():
        holm_adjust([c for _, c in members], alpha)
    return {"tables": tables, "per_table": per_table, "total": total, "alpha": alpha,
            "family": family_label(family),
            "families": {name: [label for label, _ in members] for name, members in groups.items()},
            "correction": "none in the table columns (intervals, p values and verdicts per comparison); Holm's "
                          f"step-down over {family_label(family)}: p_holm, level_holm, lo_holm, hi_holm, "
                          "verdict_holm"}


def print_tables(summary: Mapping[str, Any], domains: Sequence[str], stats: Mapping[str, Any],
                 capacities: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None) -> str:
    """Print and return the markdown tables, one per setting and assignment (per-domain and average
    mean ± sample sd over seeds, seeds, and a "<ref> − row" column per reference from ``stats``, see
    :func:`compute_stats`; "(mirror)" where the pair is shown the other way round), each followed by
    its number of comparisons, then the total and the correction line; ``capacities`` ({setting:
    {assignment: {domain: capacity}}}) adds a line per table. Works on a results JSON's ``summary``."""
    lines = []
    for setting, by_assignment in summary.items():
        for assignment, table in by_assignment.items():
            result = stats["tables"][setting][assignment]
            refs = result["references"]
            cells_of = {(c["reference"], c["row"]): format_comparison(c) for c in result["comparisons"]}
            lines.append(f"\n### {setting}, {assignment}\n")
            if capacities and assignment in capacities.get(setting, {}):
                lines.append("capacities: " + ", ".join(f"{d} {k}" for d, k in capacities[setting][assignment].items()) + "\n")
            lines += ["| row | " + " | ".join(domains) + " | average | n | " + " | ".join(f"{r} − row" for r in refs) + " |",
                      "|---" * (len(domains) + 3 + len(refs)) + "|"]
            for row, cells in table["rows"].items():
                text = [mean_sd(cells[d]) for d in (*domains, "average")] + [str(len(cells["seeds"]))]
                for ref in refs:
                    mirror = "(mirror)" if (row, ref) in cells_of else ""
                    text.append("" if row == UNTUNED else "—" if row == ref else cells_of.get((ref, row), mirror))
                lines.append(f"| {row} | " + " | ".join(text) + " |")
            count = stats["per_table"][f"{setting}/{assignment}"]
            lines.append(f"\n{count} paired comparisons in this table (reference − row on the average over the "
                         "domains: mean [95 % t interval] paired t-test p, verdict).")
    alpha = stats.get("alpha", 0.05)
    family = [(setting, assignment, c) for setting, by_a in stats["tables"].items() for assignment, t in by_a.items()
              for c in t["comparisons"] if c.get("lo_holm") is not None]
    below = sum(1 for *_, c in family if c["p_holm"] < alpha)
    lines.append(f"\n{stats['total']} comparisons in total. No multiple-comparison correction is applied to the "
                 f"intervals, p values or verdicts in the tables; with Holm's correction over "
                 f"{stats.get('family', 'all comparisons of the command')} ({len(family)} comparisons), {below} keep "
                 f"p < {alpha:g} (p_holm in the JSON).")
    if family:
        lines.append(f"\nHolm-adjusted over the family of these {len(family)} comparisons (mean [adjusted interval] "
                     f"p_holm, verdict: win/loss only when p_holm < {alpha:g}):\n")
        lines += [f"* {setting}, {assignment}: {format_holm(c)}" for setting, assignment, c in family]
    text = "\n".join(lines)
    print(text)
    return text


def row_colour(row: str) -> str:
    """Return a row's fixed plot colour: tab20's dark shades in ``VARIANTS`` order for the first ten rows,
    then the light shades (the eleventh row gets the first row's hue, and so on)."""
    import matplotlib

    labels = list(VARIANTS)
    i = labels.index(row) if row in labels else len(labels) + sum(map(ord, row))
    shade = 2 * (i % 10) + (i // 10) % 2
    return matplotlib.colors.to_hex(matplotlib.colormaps["tab20"](shade))


def plot(summary: Mapping[str, Any], suffix: str = "", out_dir: Path = RESULTS_DIR) -> list[Path]:
    """Write ``accuracy-<setting><suffix>.png`` to ``out_dir`` for every setting: one panel per
    assignment, the mean over seeds of the average accuracy against the round for every row (dashed
    for rows with overrides); return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for setting, by_assignment in summary.items():
        fig, axes = plt.subplots(1, len(by_assignment), figsize=(5.5 * len(by_assignment), 4.2), squeeze=False)
        for ax, (assignment, table) in zip(axes[0], by_assignment.items()):
            for row, curve in table["curves"].items():
                rounds = sorted(curve, key=int)
                dashed = row in VARIANTS and bool(VARIANTS[row].overrides)
                ax.plot([int(r) for r in rounds], [np.mean(curve[r]) for r in rounds], marker="o", markersize=3,
                        label=row, color=row_colour(row), linestyle="--" if dashed else "-")
            ax.set(title=f"{setting}, {assignment}", xlabel="round", ylabel="average top-1 (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"accuracy-{setting}{suffix}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _name(text: str) -> str:
    if text and not _NAME.match(text):  # "" (the default, no tag) passes
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '.', '_' and '-' only")
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: plan, run (or reuse) and summarise the runs; print the tables and write
    the plots and the results JSON."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--assignments", nargs="+", default=["paper", "rich-hard"], choices=list(ASSIGNMENTS),
                        help="which domain gets which capacity (ALLlarge and ALLsmall run once for all)")
    parser.add_argument("--rows", "--methods", dest="rows", nargs="+", default=list(DEFAULT_ROWS), choices=list(VARIANTS),
                        metavar="ROW", help=f"table rows, from: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--reference", nargs="+", default=["fedra", BEST_OPTION], choices=[*VARIANTS, BEST_OPTION],
                        metavar="ROW",
                        help=f"rows every other row is compared with ({BEST_OPTION}: the fedra-* row with the best mean average)")
    parser.add_argument("--family", nargs="+", default=[FAMILY_ALL], metavar="FAMILY",
                        help="the comparisons Holm's correction (p_holm, Holm-adjusted intervals) runs over: 'all' "
                             "(every comparison of the command, one family), 'table' (one family per table), or "
                             "REF:ROW pairs (one family: those pairs in every table, either order; each pair "
                             "must be compared, i.e. one of its rows an explicit --reference)")
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate of the Holm intervals")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "accuracy-runs"), help="folder of the run folders")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="folder of the results JSON and plots")
    parser.add_argument("--weights", default="default", help="backbone-weights for every run (pin a file)")
    parser.add_argument("--tag", type=_name, default="",
                        help="appended to run names and results files (e.g. runs with another backbone file)")
    parser.add_argument("--rounds", type=int, default=BASE["num-server-rounds"], help="server rounds (names the runs)")
    parser.add_argument("--local-steps", type=int, default=BASE["local-steps"], help="local steps per round (names the runs)")
    parser.add_argument("--lr", type=float, default=BASE["lr"], help="client learning rate (names the runs)")
    args = parser.parse_args(argv)
    processes.install_signal_handlers()  # SIGTERM and SIGINT stop the runs in progress; no new one starts
    rows = list(dict.fromkeys(args.rows))
    try:  # a family mistake must stop the command before hours of runs, not after
        family = parse_family(args.family)
        check_family(family, rows, args.reference)
    except ValueError as e:
        parser.error(str(e))
    if not 0 < args.alpha < 1:
        parser.error("--alpha must lie in (0, 1)")
    schedule = {"num-server-rounds": args.rounds, "lr": args.lr, "local-steps": args.local_steps}
    tag = f"-{args.tag}" if args.tag else ""
    suffix = schedule_suffix(schedule) + tag

    from fedra_core.data.digits import DIGITS_DOMAINS

    domains = tuple(DIGITS_DOMAINS)
    results_dir = Path(args.results_dir)
    configs, cells = plan_runs(args.settings, args.assignments, rows, args.seeds, domains, Path(args.out), schedule,
                               args.weights, args.tag)
    print(f"{len(configs)} runs for {len(cells)} table cells, {args.jobs} at a time", flush=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {name: pool.submit(_run_one, cfg, num_nodes(cfg, domains)) for name, cfg in configs.items()}
        done = {name: f.result() for name, f in futures.items()}
    summary = summarise({key: done[name] for key, name in cells.items()}, domains)
    capacities = {s: {a: capacity_map(s, a, domains) for a in args.assignments} for s in args.settings}
    stats = compute_stats(summary, args.reference, family, args.alpha)
    tables = print_tables(summary, domains, stats, capacities)
    plot(summary, suffix, results_dir)
    name = "accuracy" if set(args.settings) == set(SETTINGS) else "accuracy-" + "-".join(args.settings)
    path = write_results(f"{name}{suffix}", {
        "base": {**BASE, **schedule}, "settings": SETTINGS, "assignments": ASSIGNMENTS, "easy_to_hard": EASY_TO_HARD,
        "capacities": capacities, "shared_runs": f"{sorted(ASSIGNMENT_FREE)} rows run once as assignment "
                                                 f"'{SHARED}' (paper capacities) and appear in every table; "
                                                 "extreme shows feature's (same data, same smallest capacity)",
        "rows": {r: {"method": VARIANTS[r].method, "overrides": VARIANTS[r].overrides} for r in rows},
        "seeds": args.seeds, "weights": args.weights, "tag": args.tag, "references": args.reference,
        "summary": summary, "stats": stats, "tables": tables, "machine": machine(),
        "seconds": time.perf_counter() - start}, results_dir / f"{name}{suffix}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
