"""Head re-fit probe: how much of a finished run's accuracy is held back by its classification head?

FedRA clients train the shared head on the output of their sub-model (3 to 12 of the blocks), while
the global model is evaluated with every block. This probe loads a run's final global state (its
``checkpoint.safetensors``), freezes everything but the head, re-fits the head on the full model's
features with the training data of every domain pooled (the same steps, batch and learning rate
for every run), and reports per-domain top-1 before and after. Run it on FedRA and on ALLlarge
(whose head was always trained on all 12 blocks): ALLlarge's gain is what extra centralised head
training buys anyway; what FedRA gains beyond that is the cost of its head's truncated features.

    python -m bench.head_probe bench/results/accuracy-runs/feature-rich-easy-{fedra,alllarge}-s0-r30
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from statistics import mean

import torch
from torch.utils.data import ConcatDataset

from bench._common import format_table, machine, set_env_defaults, write_results


def probe(run_dir: Path, steps: int, seed: int) -> dict:
    """Return per-domain top-1 (%) of ``run_dir``'s final global model before and after re-fitting
    its head for ``steps`` SGD steps on the pooled training data of every domain."""
    from fedra_core import trainable_state
    from fedra_core.data.federation import domain_split, domains_of
    from fedra_core.run_config import load_run_config
    from fedra_core.training import train_local
    from fedra_core import resolve_backbone
    from server_app.checkpoint import load_checkpoint
    from server_app.server_eval import ServerEvaluator

    cfg = load_run_config({**json.loads((run_dir / "config.json").read_text()), "server-eval-format": "dataset"})
    evaluator = ServerEvaluator.from_config(cfg, cfg.recipe(resolve_backbone(cfg.backbone_spec())))
    state = load_checkpoint(run_dir / "checkpoint.safetensors").global_state
    before = evaluator(state)
    model = evaluator.model()  # carries ``state`` now
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    spec = cfg.data_spec()
    pooled = ConcatDataset([domain_split(spec, d, "train") for d in domains_of(spec)])
    train_local(model, pooled, replace(cfg.train_settings(), max_steps=steps), seed=seed)
    # the evaluator loads and evaluates the trainable (now: head-only) state, here the re-fitted head itself
    after = evaluator(trainable_state(model))
    return {"run": run_dir.name, "before": {d: 100 * a for d, a in before.items()},
            "after": {d: 100 * a for d, a in after.items()},
            "average_before": 100 * mean(before.values()), "average_after": 100 * mean(after.values()),
            "_head": {k: v.detach().clone() for k, v in model.head.state_dict().items()}}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (with checkpoint.safetensors)")
    parser.add_argument("--steps", type=int, default=240, help="head SGD steps (default 240 = 30 rounds x 8 steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/head_probe.json)")
    args = parser.parse_args(argv)
    set_env_defaults()
    torch.set_num_threads(2)
    results = [{k: v for k, v in probe(run, args.steps, args.seed).items() if not k.startswith("_")} for run in args.runs]
    domains = list(results[0]["before"])
    rows = []
    for r in results:
        rows.append([r["run"], "before"] + [f"{r['before'][d]:.1f}" for d in domains] + [f"{r['average_before']:.1f}"])
        rows.append(["", "after"] + [f"{r['after'][d]:.1f}" for d in domains] + [f"{r['average_after']:.1f}"])
        rows.append(["", "gain"] + [f"{r['after'][d] - r['before'][d]:+.1f}" for d in domains]
                    + [f"{r['average_after'] - r['average_before']:+.1f}"])
    print(format_table(["run", "head", *domains, "average"], rows))
    path = write_results("head_probe", {"machine": machine(), "steps": args.steps, "results": results}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
