"""Client peak memory: a fresh process per measurement, holding k of the 12 blocks of a ViT-B/16.

The parent resolves (once) a ViT-B/16-shaped backbone with seeded random weights stored as a local
safetensors file, then starts one fresh Python process per measurement:

* ``baseline``: imports torch, timm, peft and fedra_core and does nothing else;
* ``k`` blocks: builds the sub-model of k randomly drawn blocks with ``build_trainable_model``
  (which reads only those blocks' tensors from the file) and runs one ``train_local`` step on a
  random batch at 224x224;
* ``evaluate`` at capacity k: evaluates the FULL global model (all 12 blocks' LoRA and the head,
  a state file written by the parent) on two batches with ``evaluate_global_model``, which holds at
  most k blocks at a time (what a node does when it answers an evaluation message);
* ``calibrate`` at capacity k (``--calibrate``, on by default; k < 12 only, as the ClientApp does
  not calibrate a client that holds every block): what the ClientApp's ``train`` does with
  full-depth head calibration. It loads the global state file first (it comes with the message),
  builds the k-block sub-model and runs one ``train_local`` step exactly as the ``k`` measurement
  (same blocks for the same repeat; its data set holds the calibration batches too), takes the trained state, deletes the model and runs
  ``calibrate_head`` on the full global state with the trained keys overlaid, for
  ``--calibration-steps`` batches of the training batch size, holding at most k blocks at a time.
  The claim measured: the calibration phase peak stays within the training peak of the same process
  (the largest peak of the phases before it), so calibrating does not raise a client's peak.

Each child reports its own memory from ``/proc/self/status``: the peak resident set (VmHWM) of
each phase (imports, backbone, build, training step, calibration; the peak is reset between phases by writing 5
to ``/proc/self/clear_refs``) and the resident set after building the model; the process peak is the
largest phase peak. ``getrusage().ru_maxrss`` is NOT used: on Linux a spawned process inherits the
high-water mark of the parent at fork/exec, so both ``RUSAGE_SELF`` in the child and
``RUSAGE_CHILDREN`` in the parent report at least the parent's RSS (it is kept in the JSON as
``ru_maxrss_inherited`` for the record). The parent compares the peak with the ideal proportional
share: baseline + embedding, final norm and head + k/12 of the block weights (float32 parameter
counts of the model).

By default the child is handed the backbone's fingerprint (as a node that already knows it), so
what is measured is the sub-model and the training step. ``--client-path`` also measures the path
the ClientApp takes on its first message, ``resolve_backbone``, which fingerprints the whole file.

Run from the repository root:  ``.venv/bin/python -m bench.client_memory``  (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import BENCH_CACHE, load_avg, MIB, format_table, machine, set_env_defaults, write_results
from runners import processes

MODEL = "vit_base_patch16_224"


def _status() -> dict[str, int]:
    """Return VmRSS, VmHWM, RssAnon and RssFile of this process in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); return whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Run one measurement in this (fresh) process and return its figures."""
    import resource

    phases: dict[str, Any] = {}
    import numpy as np
    import peft  # noqa: F401
    import timm  # noqa: F401
    import torch

    from fedra_core import Backbone, BackboneSpec, LoraSettings, TrainSettings, get_method
    from fedra_core.families import family_named
    from fedra_core import ModelRecipe, resolve_backbone, train_local

    torch.set_num_threads(args.threads)
    phases["imports"] = _status()
    result: dict[str, Any] = {"mode": args.child, "k": args.k}
    if args.child == "evaluate":
        from safetensors.torch import load_file

        from fedra_core.evaluation import evaluate_global_model

        spec = BackboneSpec(name=MODEL, weights=args.weights, num_classes=args.num_classes)
        backbone = Backbone(spec=spec, path=Path(args.weights), fingerprint=args.fingerprint, family=family_named("vit"),
                            num_layers=12, embed_dim=768)
        state = load_file(args.state)
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(
            torch.randn(2 * args.batch_size, 3, 224, 224, generator=g),
            torch.randint(0, args.num_classes, (2 * args.batch_size,), generator=g),
        )
        if not _reset_peak():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs); per-phase peaks need it")
        start = time.perf_counter()
        evaluate_global_model(ModelRecipe(backbone, LoraSettings(rank=8), get_method("fedra")), state, data, args.k, args.batch_size)
        phases["evaluate"] = {**_status(), "seconds": time.perf_counter() - start}
    elif args.child != "baseline":
        spec = BackboneSpec(name=MODEL, weights=args.weights, num_classes=args.num_classes)
        global_state: dict[str, torch.Tensor] = {}
        if args.child == "calibrate":  # the rest of the global state comes with the train message
            from safetensors.torch import load_file

            global_state = load_file(args.state)
        if not _reset_peak():
            raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs); per-phase peaks need it")
        start = time.perf_counter()
        if args.child == "client-path":
            backbone = resolve_backbone(spec)  # what NodeRuntime.backbone does on a node's first message
        else:
            backbone = Backbone(spec=spec, path=Path(args.weights), fingerprint=args.fingerprint, family=family_named("vit"),
                                num_layers=12, embed_dim=768)
        phases["resolve"] = {**_status(), "seconds": time.perf_counter() - start}
        blocks = sorted(np.random.default_rng(args.seed).choice(12, size=args.k, replace=False).tolist())
        result["blocks"] = blocks
        _reset_peak()
        start = time.perf_counter()
        torch.manual_seed(0)
        model = ModelRecipe(backbone, LoraSettings(rank=8), get_method("fedra")).build(blocks)
        phases["build"] = {**_status(), "seconds": time.perf_counter() - start}
        result["model_param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        # one batch for the step; calibration takes its batches from the same (client's) data
        n = args.batch_size * (args.calibration_steps if args.child == "calibrate" else 1)
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(
            torch.randn(n, 3, 224, 224, generator=g), torch.randint(0, args.num_classes, (n,), generator=g)
        )
        settings = TrainSettings(batch_size=args.batch_size, max_steps=1)
        _reset_peak()
        start = time.perf_counter()
        res = train_local(model, data, settings, seed=0)
        phases["train_step"] = {**_status(), "seconds": time.perf_counter() - start}
        result["steps"] = res.steps
        if args.child == "calibrate":
            from fedra_core import trainable_state
            from fedra_core.calibration import calibrate_head

            # as client_app.app.train: keep the trained state, free the sub-model, calibrate
            trained = {key: v.to("cpu") for key, v in trainable_state(model).items()}
            del model
            result["calibrate_start_rss"] = _status()["VmRSS"]
            _reset_peak()
            start = time.perf_counter()
            head = calibrate_head(ModelRecipe(backbone, LoraSettings(rank=8), get_method("fedra")), {**global_state, **trained}, data, args.k, settings, args.calibration_steps, "cpu", seed=1)
            phases["calibrate"] = {**_status(), "seconds": time.perf_counter() - start}
            result["calibration_steps"] = args.calibration_steps
            result["calibrated_keys"] = sorted(head)
    result["phases"] = phases
    result["peak"] = max(p["VmHWM"] for p in phases.values())
    result["ru_maxrss_inherited"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def run_child(extra: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Start a fresh Python process for one measurement and return the JSON it prints."""
    cmd = [sys.executable, "-m", "bench.client_memory", *extra]
    proc = processes.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def frozen_bytes(num_classes: int) -> tuple[int, int]:
    """Return (bytes of all 12 blocks, bytes of embedding + final norm + head) of the float32 model."""
    from fedra_core import BackboneSpec
    from fedra_core.backbones import create_skeleton
    from fedra_core.state import block_of_key

    model = create_skeleton(BackboneSpec(name=MODEL, weights="random", num_classes=num_classes), "meta")
    blocks = other = 0
    for name, p in model.named_parameters():
        if block_of_key(name) is not None:
            blocks += 4 * p.numel()
        else:
            other += 4 * p.numel()
    return blocks, other


def save_global_state(backbone, path: Path) -> None:
    """Write the trainable state of the full model (every block's LoRA with a non-zero B, the head) to ``path``."""
    import torch
    from safetensors.torch import save_file

    from fedra_core import LoraSettings, ModelRecipe, get_method, trainable_state

    torch.manual_seed(0)
    model = ModelRecipe(backbone, LoraSettings(rank=8), get_method("fedra")).build(range(12))
    save_file({k: (v + 0.01 * torch.randn_like(v)).contiguous() for k, v in trainable_state(model).items()}, str(path))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description="Peak RSS of a fresh client process holding k of the 12 blocks of ViT-B/16 during one training step "
                                                 "(and during streamed evaluation and head calibration at capacity k).")
    parser.add_argument("--ks", default="3,6,12", help="block counts to measure (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step at 224x224 (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child (default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=100, help="classifier classes (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per setting; the median is reported (default: %(default)s)")
    parser.add_argument("--client-path", action="store_true", help="also measure resolve_backbone (whole-file fingerprint) before building, for the smallest k")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure a client that trains k blocks then calibrates the head on full-depth features at "
                             "capacity k, for each k < 12 (default: on)")
    parser.add_argument("--calibration-steps", type=int, default=2,
                        help="head calibration batches (of --batch-size) in the calibrate measurement (default: %(default)s)")
    parser.add_argument("--cache", default=BENCH_CACHE, help="FEDRA_CACHE if unset")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: bench/results/client_memory.json)")
    # internal: the child process
    parser.add_argument("--child", choices=["baseline", "submodel", "client-path", "evaluate", "calibrate"], help=argparse.SUPPRESS)
    parser.add_argument("--state", default="", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="", help=argparse.SUPPRESS)
    parser.add_argument("--fingerprint", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    processes.install_signal_handlers()  # SIGTERM and SIGINT stop the measuring child first
    set_env_defaults(args.cache)
    if args.calibration_steps < 1:
        parser.error(f"--calibration-steps {args.calibration_steps}: must be at least 1")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    host = machine()

    from fedra_core import BackboneSpec, resolve_backbone

    backbone = resolve_backbone(BackboneSpec(name=MODEL, weights="random", num_classes=args.num_classes))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    common = ["--weights", str(backbone.path), "--fingerprint", backbone.fingerprint, "--threads", str(args.threads),
              "--batch-size", str(args.batch_size), "--num-classes", str(args.num_classes)]
    ks = [int(k) for k in args.ks.split(",")]
    block_bytes, other_bytes = frozen_bytes(args.num_classes)

    def med(runs: list[dict[str, Any]], get) -> float:
        vals = sorted(get(r) for r in runs)
        return vals[len(vals) // 2]

    base_runs = [run_child(["--child", "baseline", *common], env) for _ in range(args.repeats)]
    baseline = med(base_runs, lambda r: r["peak"])
    measured: list[dict[str, Any]] = []
    settings = [("submodel", k) for k in ks] + ([("client-path", min(ks))] if args.client_path else [])
    for mode, k in settings:
        runs = [run_child(["--child", mode, "--k", str(k), "--seed", str(i), *common], env) for i in range(args.repeats)]
        measured.append({"mode": mode, "k": k, "runs": runs,
                         "peak": med(runs, lambda r: r["peak"]),
                         "peak_min": min(r["peak"] for r in runs), "peak_max": max(r["peak"] for r in runs),
                         "after_build_rss": med(runs, lambda r: r["phases"]["build"]["VmRSS"]),
                         "build_peak": med(runs, lambda r: r["phases"]["build"]["VmHWM"]),
                         "resolve_peak": med(runs, lambda r: r["phases"]["resolve"]["VmHWM"]),
                         "step_peak": med(runs, lambda r: r["phases"]["train_step"]["VmHWM"]),
                         "step_seconds": med(runs, lambda r: r["phases"]["train_step"]["seconds"]),
                         "ideal": baseline + other_bytes + k / 12 * block_bytes})
        print(f"  measured {mode} k={k}: peak {measured[-1]['peak'] / MIB:.0f} MiB", file=sys.stderr, flush=True)
    ref = next((m["peak"] for m in measured if m["mode"] == "submodel" and m["k"] == 12), None)
    state_file = Path(backbone.path).with_name(f"global-state-{MODEL}-c{args.num_classes}.safetensors")
    if not state_file.is_file():
        save_global_state(backbone, state_file)
    calibrations = []
    for k in [k for k in ks if k < 12] if args.calibrate else []:
        # the same seeds as the sub-model runs: the same blocks, the same training step
        runs = [run_child(["--child", "calibrate", "--k", str(k), "--seed", str(i), "--state", str(state_file),
                           "--calibration-steps", str(args.calibration_steps), *common], env) for i in range(args.repeats)]
        for r in runs:
            r["train_peak"] = max(v["VmHWM"] for name, v in r["phases"].items() if name != "calibrate")
            r["calibrate_within_train"] = r["phases"]["calibrate"]["VmHWM"] <= r["train_peak"]
        calibrations.append({
            "k": k, "runs": runs,
            "peak": med(runs, lambda r: r["peak"]),
            "train_peak": med(runs, lambda r: r["train_peak"]),
            "step_peak": med(runs, lambda r: r["phases"]["train_step"]["VmHWM"]),
            "calibrate_peak": med(runs, lambda r: r["phases"]["calibrate"]["VmHWM"]),
            "calibrate_peak_max": max(r["phases"]["calibrate"]["VmHWM"] for r in runs),
            "calibrate_start_rss": med(runs, lambda r: r["calibrate_start_rss"]),
            "calibrate_seconds": med(runs, lambda r: r["phases"]["calibrate"]["seconds"]),
            "calibrate_within_train_runs": sum(r["calibrate_within_train"] for r in runs),
            "calibrate_within_train": all(r["calibrate_within_train"] for r in runs),
            "submodel_peak": next((m["peak"] for m in measured if m["mode"] == "submodel" and m["k"] == k), None),
        })
        c = calibrations[-1]
        print(f"  measured calibrate k={k}: training peak {c['train_peak'] / MIB:.0f} MiB, calibration phase peak "
              f"{c['calibrate_peak'] / MIB:.0f} MiB", file=sys.stderr, flush=True)
    evaluations = []
    for k in ks:
        runs = [run_child(["--child", "evaluate", "--k", str(k), "--state", str(state_file), *common], env) for _ in range(args.repeats)]
        evaluations.append({"k": k, "runs": runs, "peak": med(runs, lambda r: r["peak"]),
                            "seconds": med(runs, lambda r: r["phases"]["evaluate"]["seconds"])})
        print(f"  measured evaluate k={k}: peak {evaluations[-1]['peak'] / MIB:.0f} MiB", file=sys.stderr, flush=True)
    for m in measured:
        m["step_file_growth"] = med(m["runs"], lambda x: x["phases"]["train_step"]["RssFile"] - x["phases"]["build"]["RssFile"])
        m["step_anon_growth"] = med(m["runs"], lambda x: x["phases"]["train_step"]["RssAnon"] - x["phases"]["build"]["RssAnon"])
    headers = ["process", "k", "peak MiB (median)", "min-max MiB", "peak - baseline MiB", "(peak - baseline) / 12-block", "k/12",
               "RSS after build MiB", "step: file-backed growth MiB", "step: anonymous growth MiB",
               "peak in backbone phase MiB", "ideal MiB", "peak / ideal", "peak / 12-block peak", "step s"]
    base_peaks = [r["peak"] for r in base_runs]
    rows: list[list[Any]] = [["baseline (imports)", 0, f"{baseline / MIB:.0f}",
                              f"{min(base_peaks) / MIB:.0f}-{max(base_peaks) / MIB:.0f}"] + [""] * 7 + [f"{baseline / MIB:.0f}", "", "", ""]]
    ref_above = (ref - baseline) if ref else None
    for m in measured:
        rows.append([
            "ClientApp path (resolve_backbone first)" if m["mode"] == "client-path" else "sub-model + 1 step",
            m["k"], f"{m['peak'] / MIB:.0f}", f"{m['peak_min'] / MIB:.0f}-{m['peak_max'] / MIB:.0f}",
            f"{(m['peak'] - baseline) / MIB:.0f}",
            f"{(m['peak'] - baseline) / ref_above:.2f}" if ref_above else "", f"{m['k'] / 12:.2f}",
            f"{m['after_build_rss'] / MIB:.0f}", f"{m['step_file_growth'] / MIB:.0f}", f"{m['step_anon_growth'] / MIB:.0f}",
            f"{m['resolve_peak'] / MIB:.0f}", f"{m['ideal'] / MIB:.0f}", f"{m['peak'] / m['ideal']:.2f}",
            f"{m['peak'] / ref:.2f}" if ref else "", f"{m['step_seconds']:.1f}",
        ])
    print(f"\nViT-B/16 ({MODEL}, random weights in {backbone.path.name}), LoRA rank 8, batch {args.batch_size} at 224x224, "
          f"{args.threads} torch threads; block weights {block_bytes / MIB:.1f} MiB (12 blocks), embedding+norm+head "
          f"{other_bytes / MIB:.1f} MiB:")
    print(format_table(headers, rows))
    train_peak = {m["k"]: m["peak"] for m in measured if m["mode"] == "submodel"}
    print(f"\nEvaluation of the full 12-block global model by a node of capacity k ({2 * args.batch_size} images, "
          f"batch {args.batch_size}), next to the training peak at the same k:")
    print(format_table(["k", "evaluation peak MiB", "training peak MiB", "evaluation / training", "evaluation s"], [
        [e["k"], f"{e['peak'] / MIB:.0f}", f"{train_peak[e['k']] / MIB:.0f}", f"{e['peak'] / train_peak[e['k']]:.2f}", f"{e['seconds']:.1f}"]
        for e in evaluations]))
    if args.calibrate and not calibrations:
        print("\nHead calibration: not measured, no k < 12 requested (the ClientApp does not calibrate at k = 12).")
    elif args.calibrate:
        print(f"\nHead calibration after the training step ({args.calibration_steps} batches of {args.batch_size} through the "
              f"full 12-block global model, at most k blocks at a time), in the same process as the step; the ClientApp "
              f"does not calibrate at k = 12:")
        print(format_table(
            ["k", "training peak MiB", "step phase peak MiB", "RSS at calibration start MiB", "calibration phase peak MiB",
             "calibration / training", "calibration <= training (runs)", "process peak MiB", "sub-model run peak MiB", "calibration s"],
            [[c["k"], f"{c['train_peak'] / MIB:.0f}", f"{c['step_peak'] / MIB:.0f}", f"{c['calibrate_start_rss'] / MIB:.0f}",
              f"{c['calibrate_peak'] / MIB:.0f}", f"{c['calibrate_peak'] / c['train_peak']:.2f}",
              f"{'yes' if c['calibrate_within_train'] else 'NO'} ({c['calibrate_within_train_runs']}/{len(c['runs'])})",
              f"{c['peak'] / MIB:.0f}", f"{c['submodel_peak'] / MIB:.0f}" if c["submodel_peak"] else "", f"{c['calibrate_seconds']:.1f}"]
             for c in calibrations]))
        print("training peak = largest phase peak before calibration (imports, backbone, build, step); calibration <= training: "
              "the calibration phase peak of every run is at most that run's training peak.")
    print("peak = VmHWM of the child (largest of its phase peaks); ideal = baseline + embedding/norm/head + "
          "k/12 x block weights (weights only: activations and autograd buffers are not in it). "
          "File-backed growth = frozen weights paged in from the safetensors mmap; anonymous growth = activations, "
          "gradients, optimizer state.")
    path = write_results("client_memory", {
        "machine": {**host, "load_avg_at_end": load_avg()}, "command": " ".join(["python -m bench.client_memory", *argv]),
        "model": MODEL, "batch_size": args.batch_size, "threads": args.threads, "num_classes": args.num_classes,
        "block_weight_bytes": block_bytes, "other_weight_bytes": other_bytes, "baseline_peak": baseline,
        "baseline_runs": base_runs, "measured": measured, "evaluations": evaluations,
        **({"calibration_steps": args.calibration_steps, "calibrations": calibrations} if args.calibrate else {}),
    }, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
