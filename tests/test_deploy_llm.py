"""Deployment with text nodes: a real SuperLink (TLS, SuperNode authentication) and two real SuperNodes
on loopback (``deploy.launch_local``), each holding only its own text-jsonl folder
(``--node-config "data-format='text-jsonl' data-root=... capacity-layers=..."``), run two FedRA rounds
of SmolLM2-135M with ``flwr run``; the same ClientApp serves them as image nodes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from causal_lm_helpers import text_node
from server_app.outputs import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.federation]

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # deploy/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))

from deploy.launch_local import LocalFederation, NodeSpec  # noqa: E402


def test_two_text_supernodes_run_two_rounds(tmp_path):
    from fedra_core.backbones import BackboneSpec, resolve_backbone

    resolve_backbone(BackboneSpec(name="smollm2-135m", num_classes=1))  # converted once, before the nodes start
    roots = {topic: text_node(tmp_path / "sites" / topic, topic) for topic in ("cooking", "astronomy")}
    nodes = [NodeSpec(4, data_format="text-jsonl", data_root=str(roots["cooking"]), name="site-cooking"),
             NodeSpec(2, data_format="text-jsonl", data_root=str(roots["astronomy"]), name="site-astronomy")]
    run_dir = tmp_path / "runs" / "llm-deployed"
    with LocalFederation(tmp_path / "work") as fed:
        fed.start(nodes)
        result = fed.run_app({
            "backbone": "smollm2-135m", "capacities": "4,2", "num-server-rounds": 2, "local-steps": 1, "batch-size": 2,
            "eval-batch-size": 2, "lora-rank": 4, "output-dir": str(tmp_path / "runs"), "run-name": "llm-deployed",
        }, timeout=900)
    assert result.ok, f"run {result.run_id}: flwr run {result.returncode}, {result.status}:\n{result.output[-3000:]}"
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    last = records[-1]
    assert len(last["accepted"]) == 2 and last["eval-rejected"] == {}
    assert sorted(sum(row) for row in last["allocation"]) == [2, 4]
    assert set(last["perplexity"]) == {"cooking", "astronomy"}
    for domain, loss in last["loss"].items():
        assert last["perplexity"][domain] == pytest.approx(math.exp(loss)) and last["targets"][domain] > 0
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
