"""A real federation of text-jsonl nodes on SmolLM2-135M through the ServerApp and ClientApp (in-process
grid), and its exported adapter loaded in a fresh process with only transformers + peft: the
per-domain mean token NLL the server wrote in metrics.jsonl is reproduced from the export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from causal_lm_helpers import text_node
from server_app.outputs import read_metrics

PLAIN = """
import hashlib, json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
adapter, roots = sys.argv[1], json.loads(sys.argv[2])
meta = json.load(open(adapter + "/backbone.json"))
folder = meta["hf_checkpoint"]
assert hashlib.sha256(open(folder + "/model.safetensors", "rb").read()).hexdigest() == meta["hf_checkpoint_sha256"]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model = PeftModel.from_pretrained(model, adapter).eval()
tok = AutoTokenizer.from_pretrained(folder)
out = {}
for domain, root in roots.items():
    nll, tokens = 0.0, 0
    for line in open(root + "/test.jsonl", encoding="utf-8"):
        row = json.loads(line)
        user = [{"role": "user", "content": row["prompt"]}]
        prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": row["response"]}], tokenize=True, return_dict=False)
        ids = torch.tensor([full])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        n = len(full) - len(prompt)
        nll, tokens = nll + float(loss) * n, tokens + n
    out[domain] = [nll / tokens, tokens]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_text_nodes_federate_and_the_export_reproduces_the_servers_nll(tmp_path):
    from runners.local import local_federation

    roots = {topic: str(text_node(tmp_path / "data" / topic, topic)) for topic in ("cooking", "astronomy")}
    nodes = {
        501: {"data-format": "text-jsonl", "data-root": roots["cooking"], "capacity-layers": 4, "device": "cpu"},
        502: {"data-format": "text-jsonl", "data-root": roots["astronomy"], "capacity-layers": 2, "device": "cpu"},
    }
    run_config = {
        "backbone": "smollm2-135m", "capacities": "4,2", "num-server-rounds": 2, "local-steps": 2, "batch-size": 2,
        "lr": 0.05, "eval-batch-size": 2, "lora-rank": 4, "lora-dropout": 0.0,
        "output-dir": str(tmp_path / "runs"), "run-name": "llm",
    }
    run_dir, _ = local_federation(run_config, nodes)
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    last = records[-1]
    assert sorted(last["accepted"]) == [501, 502] and last["eval-rejected"] == {}
    assert sorted(sum(row) for row in last["allocation"]) == [2, 4]
    for record in (records[0], last):
        assert set(record["perplexity"]) == {"cooking", "astronomy"} and record["examples"] == {"cooking": 2, "astronomy": 2}
        for domain, loss in record["loss"].items():
            assert record["perplexity"][domain] == pytest.approx(math.exp(loss))
    assert "Perplexity of the global model" in (run_dir / "summary.md").read_text()
    assert (run_dir / "perplexity.png").is_file() and (run_dir / "accuracy.png").is_file()
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PLAIN, str(run_dir / "adapter"), json.dumps(roots)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    for domain, (nll, tokens) in plain.items():
        assert tokens == last["targets"][domain]
        assert nll == pytest.approx(last["loss"][domain], abs=2e-4), (domain, nll, last["loss"][domain])
    assert any(abs(last["loss"][d] - records[0]["loss"][d]) > 1e-3 for d in roots)  # the federation changed the model
