"""Pre-trained 12-block demo backbones (``demo-vit``, ``demo-mixer``) that tolerate skipped blocks.

No package ships pre-trained ViT / MLP-Mixer weights, so the offline demo pre-trains its own small
backbones on the MNIST pre-training block of the digits benchmark (:func:`fedra_core.data.digits.digits_pretrain`,
disjoint from every benchmark image). FedRA clients run random subsets of the blocks, so the
backbone is trained to survive that: three quarters of the batches run a random k (3..12) of the 12
blocks in their original order, the other quarter runs the full depth (a LayerDrop-style recipe).
The result is cached under ``cache_dir()/"backbones"`` with its robustness figures (accuracy of
random k-of-12 sub-models on the held-out pre-training test split) in the metadata and a JSON sidecar.

CLI: ``python -m fedra_core.demo.backbone --name demo-vit [--force]``.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.utils.data import TensorDataset

from fedra_core.backbones import PRESETS, BackboneSpec, create_skeleton, save_backbone
from fedra_core.cache import cache_dir
from fedra_core.families import family_of
from fedra_core.progress import progress_bar

# Small 12-block backbones for the offline demo: 28x28 RGB input, 7x7 patches (16 tokens).
DEMO_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {  # the shapes, defined once in fedra_core.backbones.PRESETS
    name: (preset.family, preset.kwargs) for name, preset in PRESETS.items() if name.startswith("demo-")
}
RECIPE_VERSION = "1"
DEFAULT_STEPS: dict[str, int] = {"demo-vit": 1500, "demo-mixer": 2000}
MIN_BLOCKS = 3
FULL_DEPTH_FRACTION = 0.25
# "skipped-block": the demo's recipe; "full-depth": ordinary pre-training (every batch runs all blocks),
# the control for how much a method's accuracy owes to a backbone trained to survive skipped blocks
RECIPES: dict[str, float] = {"skipped-block": FULL_DEPTH_FRACTION, "full-depth": 1.0}
REPORT_KS = (3, 6, 12)


# ----------------------------------------------------------------------------------------------
# forward through a chosen subset of blocks


def forward_blocks(model: nn.Module, x: torch.Tensor, blocks: Sequence[int] | None = None) -> torch.Tensor:
    """Run a timm ViT or Mixer on ``x`` through only the blocks with indices ``blocks`` (in the given order).

    ``blocks=None`` runs every block, which equals ``model(x)``. Returns the logits.
    """
    chosen = range(len(model.blocks)) if blocks is None else blocks
    family = family_of(model)
    x = family.embed(model, x)
    for i in chosen:
        x = model.blocks[i](x)
    return family.head(model, x)


def random_blocks(num_blocks: int, k: int, rng: np.random.Generator) -> list[int]:
    """Return ``k`` distinct block indices out of ``num_blocks``, drawn at random and kept in ascending order."""
    if not 1 <= k <= num_blocks:
        raise ValueError(f"k={k} blocks: expected 1..{num_blocks}")
    return sorted(int(i) for i in rng.choice(num_blocks, size=k, replace=False))


@torch.inference_mode()
def _accuracy(
    model: nn.Module,
    dataset: TensorDataset,
    blocks: Sequence[int] | None,
    batch_size: int = 1000,
    done: Callable[[int], object] | None = None,
) -> float:
    x, y = dataset.tensors[0], dataset.tensors[1]
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((forward_blocks(model, x[i : i + batch_size], blocks).argmax(1) == y[i : i + batch_size]).sum())
        if done is not None:
            done(min(batch_size, len(x) - i))
    return correct / max(len(x), 1)


def subset_accuracy(
    model: nn.Module,
    dataset: TensorDataset,
    k: int,
    draws: int,
    rng: np.random.Generator,
    *,
    done: Callable[[int], object] | None = None,
) -> float:
    """Mean top-1 accuracy on ``dataset`` of ``draws`` random k-of-N-block sub-models (no tuning, same head).

    With ``k`` equal to the depth there is only one sub-model, so it is evaluated once. ``done``, if given,
    is called with the number of images after each evaluated batch (for a progress bar).
    """
    num_blocks = len(model.blocks)
    if draws < 1:
        raise ValueError(f"draws={draws}: expected at least 1")
    was_training = model.training
    model.eval()
    try:
        if k == num_blocks:
            return _accuracy(model, dataset, None, done=done)
        return float(
            np.mean([_accuracy(model, dataset, random_blocks(num_blocks, k, rng), done=done) for _ in range(draws)])
        )
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------------
# pre-training


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation: a small random affine map (rotation, scale, shift) per image."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(12)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.12
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2.5 / 14)  # about +-2.5 pixels
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _schedule(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def build_demo_backbone(
    name: str,
    seed: int = 0,
    steps: int | None = None,
    *,
    out: Path | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    eval_images: int | None = None,
    eval_draws: int = 5,
    threads: int | None = None,
    verbose: bool = False,
    recipe: str = "skipped-block",
) -> dict[str, float | int | str]:
    """Pre-train demo backbone ``name`` with ``recipe`` (a key of :data:`RECIPES`); return its figures
    (and save it to ``out``).

    steps: optimiser steps (default :data:`DEFAULT_STEPS`, sized to take about 3-4 minutes on 2 CPU cores).
    eval_images: number of held-out pre-training test images used for the figures (all if None).
    eval_draws: random sub-models averaged per k.
    threads: torch threads while building (default: the CPUs this process may use); restored afterwards.
    The figures are ``acc_k3``, ``acc_k6``, ``acc_k12`` (mean top-1 of random k-of-12 sub-models on held-out
    MNIST), ``build_seconds``, ``steps`` and ``seed``. With ``out`` the frozen (non-head) weights go there
    through :func:`fedra_core.backbones.save_backbone`, the figures into its metadata and a JSON sidecar.
    """
    if name not in DEMO_PRESETS:
        raise ValueError(f"unknown demo backbone {name!r}: expected one of {sorted(DEMO_PRESETS)}")
    if recipe not in RECIPES:
        raise ValueError(f"unknown pre-training recipe {recipe!r}: expected one of {sorted(RECIPES)}")
    steps = DEFAULT_STEPS[name] if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps={steps}: expected at least 1")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
            return _train_and_report(name, seed, steps, out, batch_size, lr, eval_images, eval_draws, verbose, recipe)
    finally:
        torch.set_num_threads(previous_threads)


def _train_and_report(
    name: str,
    seed: int,
    steps: int,
    out: Path | None,
    batch_size: int,
    lr: float,
    eval_images: int | None,
    eval_draws: int,
    verbose: bool,
    recipe: str,
) -> dict[str, float | int | str]:
    from fedra_core.data.digits import digits_pretrain

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = create_skeleton(BackboneSpec(name=name, num_classes=10), device="cpu")
    if family_of(model).name == "vit":
        for block in model.blocks:
            block.attn.fused_attn = False  # same maths; the explicit attention is ~10% faster on CPU for 17 tokens
    num_blocks = len(model.blocks)
    train, test = digits_pretrain()
    if eval_images is not None:
        test = TensorDataset(*(t[:eval_images] for t in test.tensors))
    x_all, y_all = train.tensors

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warmup = max(1, steps // 20)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    perm = torch.randperm(len(x_all), generator=gen)
    cursor = 0
    model.train()
    with progress_bar(steps, f"pre-training {name}", unit="step") as bar:
        for step in range(steps):
            if cursor + batch_size > len(perm):
                perm, cursor = torch.randperm(len(x_all), generator=gen), 0
            idx = perm[cursor : cursor + batch_size]
            cursor += batch_size
            # most batches run a random ordered subset of blocks, so that any FedRA sub-model still works
            if rng.random() < RECIPES[recipe]:
                blocks = None
            else:
                blocks = random_blocks(num_blocks, int(rng.integers(MIN_BLOCKS, num_blocks + 1)), rng)
            for group in opt.param_groups:
                group["lr"] = _schedule(step, steps, lr, warmup)
            logits = forward_blocks(model, _augment(x_all[idx], gen), blocks)
            loss = F.cross_entropy(logits, y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            bar.update()
            if step % 50 == 0:
                bar.set_postfix_str(f"loss {loss.item():.3f}", refresh=False)
            if verbose and (step % 100 == 0 or step == steps - 1):
                line = f"step {step:5d}/{steps}  loss {loss.item():.3f}  {time.perf_counter() - t0:.0f} s"
                with bar.external_write_mode():
                    print(line, flush=True)
    train_seconds = time.perf_counter() - t0

    eval_rng = np.random.default_rng([seed, 2])
    figures: dict[str, float | int | str] = {}
    # the bar counts images weighted by the blocks they run through (k); the full depth is evaluated once
    work = len(test) * sum(k * (1 if k == num_blocks else eval_draws) for k in REPORT_KS)
    with progress_bar(work, f"evaluating {name} sub-models", weighted=True) as bar:
        for k in REPORT_KS:
            bar.set_postfix_str(f"k={k}", refresh=False)
            acc = subset_accuracy(model, test, k, eval_draws, eval_rng, done=lambda n, k=k: bar.update(n * k))
            figures[f"acc_k{k}"] = round(acc, 4)
    figures.update(
        name=name,
        seed=seed,
        steps=steps,
        eval_images=len(test),
        eval_draws=eval_draws,
        train_seconds=round(train_seconds, 1),
        build_seconds=round(time.perf_counter() - t0, 1),
        recipe_version=RECIPE_VERSION,
        recipe=recipe,
    )
    if out is not None:
        metadata = {
            "source": f"fedra demo pre-training of {name} on the digits pre-training split (MNIST block disjoint "
            f"from the benchmark), {recipe} recipe",
            **{f"demo_{k}": str(v) for k, v in figures.items()},
        }
        figures["fingerprint"] = save_backbone(model.state_dict(), out, metadata)
        _write_json(out.with_suffix(".json"), figures)
    return figures


def _write_json(path: Path, data: dict[str, float | int | str]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _cached_version(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("demo_recipe_version")
    except Exception:  # a truncated or foreign file is rebuilt
        return None


def demo_backbone_path(name: str = "demo-vit", seed: int = 0) -> Path:
    """Return where the demo backbone ``name`` pre-trained with ``seed`` is cached."""
    if name not in DEMO_PRESETS:
        raise ValueError(f"unknown demo backbone {name!r}: expected one of {sorted(DEMO_PRESETS)}")
    suffix = "" if seed == 0 else f"-seed{seed}"
    return cache_dir() / "backbones" / f"{name}{suffix}.safetensors"


def demo_backbone_file(
    name: str = "demo-vit",
    seed: int = 0,
    *,
    force: bool = False,
    steps: int | None = None,
    eval_images: int | None = None,
    verbose: bool = False,
) -> Path:
    """Return the cached weights file of demo backbone ``name``, pre-training it first if needed.

    The build runs once under a file lock, so parallel simulation workers wait for a single build.
    A file written by another recipe version is rebuilt; ``force`` rebuilds in any case. ``steps`` and
    ``eval_images`` only apply when a build happens (see :func:`build_demo_backbone`).
    """
    path = demo_backbone_path(name, seed)
    if not force and path.is_file() and _cached_version(path) == RECIPE_VERSION:
        return path
    requested = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # another process may have built it while we waited; with force, only a file newer than our request counts
            fresh = path.is_file() and _cached_version(path) == RECIPE_VERSION
            if force and fresh:
                fresh = path.stat().st_mtime > requested
            if not fresh:
                build_demo_backbone(name, seed, steps, out=path, eval_images=eval_images, verbose=verbose)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def demo_backbone_figures(name: str = "demo-vit", seed: int = 0) -> dict[str, float | int | str]:
    """Return the robustness figures stored next to the cached demo backbone (building it if needed)."""
    path = demo_backbone_file(name, seed)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k.removeprefix("demo_"): v for k, v in meta.items() if k.startswith("demo_")}


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Pre-train (or show) a demo backbone and its skipped-block robustness."
    )
    parser.add_argument("--name", default="demo-vit", choices=sorted(DEMO_PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the preset's)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached file exists")
    parser.add_argument("--recipe", default="skipped-block", choices=sorted(RECIPES),
                        help="full-depth: ordinary pre-training, written to --out (a control for the benchmark)")
    parser.add_argument("--out", type=Path, default=None, help="with --recipe full-depth: the weights file to write")
    args = parser.parse_args(argv)
    if args.recipe != "skipped-block":
        if args.out is None:
            parser.error("--recipe full-depth needs --out FILE (the cache keeps only the demo's own recipe)")
        fig = build_demo_backbone(args.name, args.seed, args.steps, out=args.out, verbose=True, recipe=args.recipe)
        print(f"{args.out} (fingerprint {fig['fingerprint']}): " + ", ".join(f"k={k} {100 * float(fig[f'acc_k{k}']):.1f}%" for k in REPORT_KS))
        return

    target = demo_backbone_path(args.name, args.seed)
    cached = not args.force and target.is_file() and _cached_version(target) == RECIPE_VERSION
    path = demo_backbone_file(args.name, args.seed, force=args.force, steps=args.steps, verbose=True)
    fig = demo_backbone_figures(args.name, args.seed)
    print(f"{path} ({'cached' if cached else 'built'}; fingerprint {fig.get('fingerprint', '?')})")
    print(
        f"held-out MNIST ({fig['eval_images']} images), random k-of-12-block sub-models, mean of "
        f"{fig['eval_draws']} draws:"
    )
    for k in REPORT_KS:
        print(f"  k={k:<2d}  {100 * float(fig[f'acc_k{k}']):5.1f}%")
    print(
        f"build time {float(fig['build_seconds']):.0f} s "
        f"({fig['steps']} steps, data + training {float(fig['train_seconds']):.0f} s)"
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
