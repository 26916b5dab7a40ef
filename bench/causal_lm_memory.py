"""A SmolLM2-135M node holding k of the 30 decoder layers: peak memory and time of one round.

Two fresh Python processes per k (default 4, 8, 16, 30), one per message a node answers. The
training one builds the k-layer sub-model of
SmolLM2-135M-Instruct (the preset ``smollm2-135m``: the wheel's GGUF converted once into the cache;
the node reads only its layers, the embedding and the final norm from the backbone file), trains
``--steps`` optimiser steps of LoRA (rank 8, every attention and MLP projection) on chatterbot
``trivia`` pairs at batch ``--batch-size``; the evaluation one evaluates the FULL global model (all
30 layers' LoRA, written by the parent and read from a file, as the message brings it) on
``--eval-examples`` held-out pairs holding at most k layers at a time. (In one process the memory
the allocator keeps after training would hide the evaluation's own peak.) Each phase's peak resident set (VmHWM, reset between phases through
``/proc/self/clear_refs``, as ``bench.client_memory`` does) and time are reported, with the process
baseline after the imports.

Run from the repository root:  ``.venv/bin/python -m bench.causal_lm_memory``  (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import MIB, format_table, machine, set_env_defaults, write_results
from bench.client_memory import _reset_peak, _status

DEPTHS = (4, 8, 16, 30)


def global_state_file(path: str) -> str:
    """Write the full model's trainable state (every layer's LoRA, as the server sends it) to ``path``; return it."""
    from safetensors.torch import save_file

    from fedra_core.backbones import BackboneSpec, resolve_backbone
    from fedra_core.lora import LoraSettings, trainable_state
    from fedra_core.methods import get_method
    from fedra_core.trainable import ModelRecipe

    backbone = resolve_backbone(BackboneSpec(name="smollm2-135m", num_classes=1))
    recipe = ModelRecipe(backbone, LoraSettings(rank=8, dropout=0.0), get_method("fedra"))
    save_file({k: v.contiguous() for k, v in trainable_state(recipe.build(range(backbone.num_layers))).items()}, path)
    return path


def child(k: int, steps: int, batch_size: int, eval_examples: int, threads: int, state_path: str, mode: str) -> dict[str, Any]:
    """Measure one node message at capacity ``k`` in this (fresh) process, a training round (``mode``
    ``train``: build and train) or an evaluation (``evaluate``); return its figures."""
    import numpy as np
    import torch

    from fedra_core.backbones import BackboneSpec, resolve_backbone
    from fedra_core.data.chatterbot import chatterbot_split
    from fedra_core.data.federation import DataSpec
    from fedra_core.evaluation import evaluate_global_model
    from fedra_core.lora import LoraSettings
    from fedra_core.methods import get_method
    from fedra_core.trainable import ModelRecipe
    from fedra_core.training import TrainSettings, train_local

    torch.set_num_threads(threads)
    imports = _status()
    spec = BackboneSpec(name="smollm2-135m", num_classes=1)
    backbone = resolve_backbone(spec)
    recipe = ModelRecipe(backbone, LoraSettings(rank=8, dropout=0.0), get_method("fedra"))
    data_spec = DataSpec(dataset="chatterbot", tokenizer=spec.constructor()[0])
    train = chatterbot_split(data_spec, "trivia", "train")
    test = torch.utils.data.Subset(chatterbot_split(data_spec, "trivia", "test"), range(eval_examples))
    from safetensors.torch import load_file

    global_state = load_file(state_path)  # what an evaluation message carries
    phases: dict[str, Any] = {"imports": imports, "imports-and-data": _status()}
    blocks = sorted(np.random.default_rng(k).choice(backbone.num_layers, size=k, replace=False).tolist())
    if not _reset_peak():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs); per-phase peaks need it")
    if mode == "evaluate":  # a fresh process: memory the allocator kept from training would count otherwise
        start = time.perf_counter()
        evaluation = evaluate_global_model(recipe, global_state, test, capacity=k, batch_size=batch_size)
        phases["evaluate"] = {**_status(), "seconds": time.perf_counter() - start, "loss": evaluation.loss,
                              "tokens": evaluation.targets}
        return {"k": k, "mode": mode, "seq_len": int(test.dataset.input_ids.shape[1]), "phases": phases}
    start = time.perf_counter()
    model = recipe.build(blocks)
    phases["build"] = {**_status(), "seconds": time.perf_counter() - start}
    _reset_peak()
    start = time.perf_counter()
    result = train_local(model, train, TrainSettings(lr=0.02, batch_size=batch_size, max_steps=steps), seed=0)
    phases["train"] = {**_status(), "seconds": time.perf_counter() - start, "loss": result.loss}
    return {"k": k, "mode": mode, "blocks": blocks, "seq_len": int(train.input_ids.shape[1]), "phases": phases}


def main(argv: list[str] | None = None) -> int:
    """Run one child process per depth, print the table and write ``bench/results/causal_lm_memory.json``."""
    parser = argparse.ArgumentParser(description="SmolLM2-135M node: peak memory and round time at k of 30 layers")
    parser.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-examples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--state", default="", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch_size, args.eval_examples, args.threads, args.state, args.mode)))
        return 0
    set_env_defaults()
    import tempfile

    state = global_state_file(str(Path(tempfile.mkdtemp()) / "global-state.safetensors"))
    rows, results = [], []
    for k in (int(d) for d in args.depths.split(",")):
        r: dict[str, Any] = {"k": k, "phases": {}}
        for mode in ("train", "evaluate"):
            cmd = [sys.executable, "-m", "bench.causal_lm_memory", "--child", str(k), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--eval-examples", str(args.eval_examples), "--threads", str(args.threads),
                   "--state", state, "--mode", mode]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            one = json.loads(done.stdout.strip().splitlines()[-1])
            r["phases"].update(one["phases"])
            r[f"{mode}_seq_len"] = one["seq_len"]
            r.setdefault("blocks", one.get("blocks"))
        results.append(r)
        p = r["phases"]
        rows.append([k, f"{p['imports']['VmRSS'] / MIB:.0f}", f"{p['imports-and-data']['VmRSS'] / MIB:.0f}", f"{p['build']['VmHWM'] / MIB:.0f}",
                     f"{p['train']['VmHWM'] / MIB:.0f}", f"{p['evaluate']['VmHWM'] / MIB:.0f}",
                     f"{p['build']['seconds']:.2f}", f"{p['train']['seconds']:.1f}", f"{p['evaluate']['seconds']:.1f}"])
        print(f"k={k} done", flush=True)
    print(format_table(["k layers", "RSS imports (MiB)", "RSS + data", "build peak", "train peak", "eval peak", "build s", "train s", "eval s"], rows))
    write_results("causal_lm_memory", {"machine": machine(), "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
