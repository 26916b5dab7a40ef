"""Run folder outputs: metrics.jsonl, summary.md, plots, the exported adapter."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import MetricRecord

from server_app.privacy_summary import privacy_lines


def _timings(metrics: MetricRecord) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("time/"):
            _, node, phase = key.split("/", 2)
            out.setdefault(node, {})[phase] = float(value)
    return out


def train_record(metrics: MetricRecord, nodes: Mapping[int, Any], rejected: Mapping[str, str], num_layers: int) -> dict[str, Any]:
    """Return the ``metrics.jsonl`` entries of a training round from the strategy's ``aggregate_train``
    metrics, the registered nodes (for their domains) and the reasons of the replies left out."""
    ids = [int(n) for n in metrics["node-ids"]]
    caps = [int(c) for c in metrics["capacities"]]
    labels = []
    for node, cap in zip(ids, caps):
        domain = getattr(nodes.get(node), "domain", "") or f"node {node}"
        labels.append(f"{domain} ({cap} blocks)")
    flat = [int(a) for a in metrics["allocation"]]
    return {
        "partitions": [int(p) for p in metrics["partitions"]],
        "node-ids": ids,
        "node-labels": labels,
        "capacities": caps,
        "allocation": [flat[i * num_layers:(i + 1) * num_layers] for i in range(len(ids))],
        "bytes-sent": {str(n): int(b) for n, b in zip(ids, metrics["bytes-sent"])},
        "bytes-received": {str(n): int(b) for n, b in zip(ids, metrics["bytes-received"]) if b},
        "accepted": [int(n) for n in metrics["accepted-ids"]],
        "rejected": {str(n): rejected.get(str(n), "left out") for n in metrics["rejected-ids"]},
        "skipped": bool(metrics["skipped"]),
        "train-loss": float(metrics["train-loss"]) if "train-loss" in metrics else None,
        "train-timings": _timings(metrics),
    }


def eval_record(metrics: MetricRecord, rejected: Mapping[str, str]) -> dict[str, Any]:
    """Return the ``metrics.jsonl`` entries of a federated evaluation from the strategy's
    ``aggregate_evaluate`` metrics and the reasons of the replies left out."""
    out: dict[str, Any] = {}
    domains = [k.split("/", 1)[1] for k in metrics if k.startswith("accuracy/")]
    if domains:
        out["accuracy"] = {d: float(metrics[f"accuracy/{d}"]) for d in domains}
        out["average"] = float(metrics["average"])
        out["loss"] = {d: float(metrics[f"loss/{d}"]) for d in domains}
        out["examples"] = {d: int(metrics[f"examples/{d}"]) for d in domains}
        for name in ("targets", "perplexity"):  # a causal LM's response tokens and exp(mean token NLL)
            if f"{name}/{domains[0]}" in metrics:
                out[name] = {d: (int if name == "targets" else float)(metrics[f"{name}/{d}"]) for d in domains}
    out["eval-nodes"] = [int(n) for n in metrics["eval-ids"]]
    out["eval-rejected"] = {str(n): rejected.get(str(n), "left out") for n in metrics["eval-rejected-ids"]}
    out["eval-timings"] = _timings(metrics)
    return out


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one round's record as a JSON line to ``metrics.jsonl``."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Return the records of ``metrics.jsonl`` (empty when absent)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_round: int) -> None:
    """Drop records after ``last_round`` (a resumed run rewrites them)."""
    kept = [r for r in read_metrics(run_dir) if r["round"] <= last_round]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def per_domain_table(records: list[dict[str, Any]]) -> str:
    """Return a markdown table: one row per evaluated round, a column per domain and the average (%)."""
    evaluated = [r for r in records if r.get("accuracy")]
    if not evaluated:
        return "(no evaluation yet)\n"
    domains = list(evaluated[-1]["accuracy"])
    lines = ["| round | " + " | ".join(domains) + " | average |", "|---" * (len(domains) + 2) + "|"]
    for r in evaluated:
        accs = [100 * r["accuracy"][d] for d in domains]
        lines.append(f"| {r['round']} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {100 * r['average']:.2f} |")
    return "\n".join(lines) + "\n"


def perplexity_table(records: list[dict[str, Any]]) -> str:
    """Return a markdown table of a causal LM's perplexity: one row per evaluated round, a column per domain
    ("" when the records hold none)."""
    evaluated = [r for r in records if r.get("perplexity")]
    if not evaluated:
        return ""
    domains = list(evaluated[-1]["perplexity"])
    lines = ["| round | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    for r in evaluated:
        lines.append(f"| {r['round']} | " + " | ".join(f"{r['perplexity'][d]:.2f}" for d in domains) + " |")
    return "\n".join(lines) + "\n"


def node_labels(records: list[dict[str, Any]]) -> dict[int, str]:
    """Return every node that took part, in first-seen order, with its latest label (domain and capacity)."""
    labels: dict[int, str] = {}
    for r in records:
        for node, label in zip(r.get("node-ids", []), r.get("node-labels", [])):
            labels[node] = label
    return labels


def node_table(records: list[dict[str, Any]]) -> str:
    """Return a markdown table: one row per node (domain and capacity), rounds asked and rounds accepted."""
    rows = node_labels(records)
    if not rows:
        return "(no round yet)\n"
    lines = ["| node | rounds asked | replies accepted |", "|---|---|---|"]
    for node, label in rows.items():
        asked = sum(node in r.get("node-ids", []) for r in records)
        accepted = sum(node in r.get("accepted", []) for r in records)
        lines.append(f"| {label} | {asked} | {accepted} |")
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, config: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """Write ``summary.md``: the settings, the accuracy table and the traffic totals; return its path."""
    sent = sum(sum(r.get("bytes-sent", {}).values()) for r in records)
    received = sum(sum(r.get("bytes-received", {}).values()) for r in records)
    rejected = sum(len(r.get("rejected", {})) for r in records)
    text = [
        "# FedRA run summary",
        "",
        f"method `{config['method']}`, backbone `{config['backbone']}`, dataset `{config['dataset']}`, "
        f"{len([r for r in records if r['round'] > 0])} rounds, seed {config['seed']}",
        "",
        "## Top-1 accuracy (%) of the global model per domain" + (" (next-token accuracy on response tokens)" if perplexity_table(records) else ""),
        "",
        per_domain_table(records),
        *(["## Perplexity of the global model per domain (response tokens)", "", perplexity_table(records)] if perplexity_table(records) else []),
        "## Nodes",
        "",
        node_table(records),
        "## Traffic",
        "",
        f"sent to nodes: {sent / 1e6:.3f} MB; received from nodes: {received / 1e6:.3f} MB; rejected replies: {rejected}",
        "",
        *privacy_lines(config, records),
    ]
    path = run_dir / "summary.md"
    path.write_text("\n".join(text))
    return path


def write_plots(run_dir: Path, records: list[dict[str, Any]], num_layers: int) -> list[Path]:
    """Draw ``accuracy.png`` (per domain over rounds), ``perplexity.png`` (a causal LM's, per domain over
    rounds, log scale) and ``allocation.png`` (blocks x nodes over rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    evaluated = [r for r in records if r.get("accuracy")]
    if evaluated:
        fig, ax = plt.subplots(figsize=(7, 4))
        rounds = [r["round"] for r in evaluated]
        for d in evaluated[-1]["accuracy"]:
            ax.plot(rounds, [100 * r["accuracy"].get(d, np.nan) for r in evaluated], label=d, alpha=0.8)
        ax.plot(rounds, [100 * r["average"] for r in evaluated], "k-", lw=2.5, label="average")
        ax.set(xlabel="round", ylabel="top-1 accuracy (%)", title="Global model accuracy per domain")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        paths.append(run_dir / "accuracy.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    with_perplexity = [r for r in evaluated if r.get("perplexity")]
    if with_perplexity:
        fig, ax = plt.subplots(figsize=(7, 4))
        rounds = [r["round"] for r in with_perplexity]
        for d in with_perplexity[-1]["perplexity"]:
            ax.plot(rounds, [r["perplexity"].get(d, np.nan) for r in with_perplexity], "o-", label=d, alpha=0.8)
        ax.set(xlabel="round", ylabel="perplexity (response tokens)", title="Global model perplexity per domain", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        paths.append(run_dir / "perplexity.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    trained = [r for r in records if r.get("allocation")]
    if trained:
        labels = node_labels(trained)
        fig, axes = plt.subplots(1, len(labels), figsize=(1.2 + 1.9 * len(labels), 4), sharey=True, squeeze=False)
        for ax, (node, label) in zip(axes[0], labels.items()):
            grid = np.full((len(trained), num_layers), np.nan)
            for i, r in enumerate(trained):
                if node in r["node-ids"]:
                    grid[i] = r["allocation"][r["node-ids"].index(node)]
            ax.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1, interpolation="nearest",
                      extent=(-0.5, num_layers - 0.5, trained[-1]["round"] + 0.5, trained[0]["round"] - 0.5))
            ax.set_title(label, fontsize=9)
            ax.set(xlabel="block")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][0].set_ylabel("round")
        fig.suptitle("Blocks held by each node per round")
        fig.tight_layout()
        paths.append(run_dir / "allocation.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths
