"""The Flower apps in process: the real ServerApp logic and ClientApp, a Grid test double between them."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow  # every test here runs a federation in process

from app_helpers import NODES, TINY_RUN, allocation_rows, initial_global_state, run_inprocess, train_messages
from fedra_core import aggregate_fedra, get_method, resolve_backbone
from client_app.app import app as client_app
from fedra_core.run_config import load_run_config
from runners.local import InProcessGrid
from server_app.checkpoint import load_checkpoint
from server_app.outputs import read_metrics


def replay(run_config: dict, grid: InProcessGrid, replies: list, weighted: bool) -> list[dict]:
    """Recompute the global state after each round with aggregate_fedra from the recorded replies."""
    states = [initial_global_state(run_config)]
    for r in range(1, run_config["num-server-rounds"] + 1):
        sent = train_messages(grid, r)
        blocks = [list(m.content["config"]["blocks"]) for m in sent]
        got = {nid: rep for rr, nid, rep in replies if rr == r}
        rows = [i for i, m in enumerate(sent) if m.metadata.dst_node_id in got]
        client_states = [got[sent[i].metadata.dst_node_id].content["arrays"].to_torch_state_dict() for i in rows]
        weights = [got[sent[i].metadata.dst_node_id].content["metrics"]["num-examples"] for i in rows] if weighted else None
        states.append(aggregate_fedra(states[-1], client_states, allocation_rows([blocks[i] for i in rows]), weights))
    return states


@pytest.mark.parametrize("aggregation", ["uniform", "examples"])
def test_rounds_send_allocated_lora_only_and_fold_replies_with_aggregate_fedra(tmp_path, aggregation):
    overrides = {"aggregation": aggregation}
    if aggregation == "examples":  # Dirichlet shards of one domain: clients of different sizes
        overrides.update({"domains": "mnist", "partitioning": "feature-label", "clients-per-domain": 3})
    run_dir, grid, replies = run_inprocess(tmp_path, **overrides)
    run_config = {**TINY_RUN, **overrides}
    expected = replay(run_config, grid, replies, weighted=aggregation == "examples")
    all_keys = list(expected[0])
    for r in range(1, 4):
        sent = train_messages(grid, r)
        assert len(sent) == 3
        for m in sent:
            blocks = list(m.content["config"]["blocks"])
            keys = set(m.content["arrays"].keys())
            assert keys == set(get_method("fedra").client_keys(all_keys, blocks))
            assert all("lora_" in k or k.split(".")[0] in ("head", "norm") for k in keys)  # no frozen weight
            state = m.content["arrays"].to_torch_state_dict()
            assert all(torch.equal(state[k], expected[r - 1][k]) for k in keys)  # global state before round r
        assert sorted(len(m.content["config"]["blocks"]) for m in sent) == [3, 6, 12]
    final = load_checkpoint(run_dir / "checkpoint.safetensors")
    assert final.round == 3 and final.global_state.keys() == expected[3].keys()
    assert all(torch.equal(final.global_state[k], expected[3][k]) for k in expected[3])
    if aggregation == "examples":
        sizes = {rep.content["metrics"]["num-examples"] for _, _, rep in replies}
        assert len(sizes) > 1  # the weighting had something to weigh
        uniform = replay(run_config, grid, replies, weighted=False)
        assert not all(torch.equal(uniform[3][k], expected[3][k]) for k in expected[3])


def test_run_folder_outputs_and_metrics(tmp_path):
    run_dir, grid, _ = run_inprocess(tmp_path, **{"round-timeout": 77.0, "query-timeout": 33.0})
    # every message expires when the server stops waiting for it (no stale task for a node that comes back late)
    assert {(m.metadata.message_type, m.metadata.ttl) for m in grid.sent} == {
        ("query", 33.0), ("train", 77.0), ("evaluate", 77.0)}
    for name in ("metrics.jsonl", "summary.md", "accuracy.png", "allocation.png", "config.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/backbone.json"):
        assert (run_dir / name).is_file(), name
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for r in records[1:]:
        sent = train_messages(grid, r["round"])
        assert r["allocation"] == [
            [int(j in m.content["config"]["blocks"]) for j in range(12)] for m in sent
        ]
        for m in sent:  # bytes on the wire, by hand: each tensor as numpy's .npy file (how Flower serialises an Array)
            by_hand = 0
            for tensor in m.content["arrays"].to_torch_state_dict().values():
                buffer = io.BytesIO()
                np.save(buffer, tensor.numpy(), allow_pickle=False)
                by_hand += buffer.tell()
            assert r["bytes-sent"][str(m.metadata.dst_node_id)] == by_hand
        assert set(r["accuracy"]) == {"mnist", "printed", "usps"}
        assert r["average"] == pytest.approx(sum(r["accuracy"].values()) / 3)
    assert "| 3 |" in (run_dir / "summary.md").read_text()


def test_exported_adapter_reproduces_reported_accuracy_in_a_new_process(tmp_path):
    run_dir, _, _ = run_inprocess(tmp_path)
    reported = read_metrics(run_dir)[-1]["accuracy"]
    script = f"""
import json, timm, torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset
from fedra_core.data.partition import stratified_indices
from fedra_core.data.digits import digits_domain
adapter = {str(run_dir / 'adapter')!r}
meta = json.load(open(adapter + "/backbone.json"))
model = getattr(timm.models, meta["timm_class"])(num_classes=meta["num_classes"], **meta["model_kwargs"])
model.load_state_dict({{k: v for k, v in load_file(meta["weights_path"]).items() if not k.startswith("head.")}}, strict=False)
model = PeftModel.from_pretrained(model, adapter).eval()
acc = {{}}
for d in ["mnist", "printed", "usps"]:
    full = digits_domain(d, "test")  # the nodes' eval-max-examples=100: a seeded stratified sample (seed 0)
    ds = Subset(full, stratified_indices(full.tensors[1].numpy(), 100, 0))
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(ds, batch_size=50):
            correct += int((model(x).argmax(1) == y).sum())
    acc[d] = correct / len(ds)
print(json.dumps(acc))
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == reported


def test_node_with_other_backbone_is_left_out_and_refuses_to_train(tmp_path):
    backbone = resolve_backbone(load_run_config(TINY_RUN).backbone_spec())
    other = tmp_path / "other.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(str(backbone.path)).items()}, str(other))
    nodes = {**NODES, 104: {"partition-id": 2, "backbone-weights": str(other)}}
    _, grid, _ = run_inprocess(tmp_path, nodes=nodes, **{"num-server-rounds": 1})
    assert all(m.metadata.dst_node_id != 104 for m in grid.sent if m.metadata.message_type == "train")
    # asked to train anyway, the node refuses with a clear error
    with pytest.raises(ValueError, match="backbone fingerprint mismatch: the server has"):
        client_app(train_messages(grid, 1)[0], grid.contexts[104])


@pytest.mark.parametrize(
    "method, sizes",
    [("alllarge", [12, 12, 12]), ("allsmall", [3, 3, 3]), ("inclusivefl", [12, 6, 3]), ("depthfl", [12, 6, 3])],
)
def test_baselines_run_through_the_same_apps(tmp_path, method, sizes):
    run_dir, grid, _ = run_inprocess(tmp_path, method=method, **{"num-server-rounds": 2})
    for r in (1, 2):
        sent = train_messages(grid, r)
        blocks = [list(m.content["config"]["blocks"]) for m in sent]
        assert [len(b) for b in blocks] == sizes
        assert all(b == list(range(len(b))) for b in blocks)  # prefixes
        if method == "depthfl":  # exits after blocks 2, 5, 8 inside each prefix
            exits = [sorted({k.split(".")[1] for k in m.content["arrays"].keys() if k.startswith("exits.")}) for m in sent]
            assert exits == [["2", "5", "8"], ["2"], []]
    records = read_metrics(run_dir)
    assert all(len(r["accepted"]) == 3 for r in records[1:])


def test_node_reporting_a_new_capacity_gets_it_next_round(tmp_path):
    from flwr.app import Message, MetricRecord, RecordDict

    def shrink(node_id, message, reply):
        if node_id == 101:  # the 12-block node now says it can hold 4
            metrics = MetricRecord({**dict(reply.content["metrics"]), "capacity-layers": 4})
            return Message(RecordDict({"arrays": reply.content["arrays"], "metrics": metrics}), reply_to=message)
        return reply

    _, grid, _ = run_inprocess(tmp_path, intercept=shrink, **{"num-server-rounds": 2})
    assert [len(m.content["config"]["blocks"]) for m in train_messages(grid, 1)] == [12, 6, 3]
    assert [len(m.content["config"]["blocks"]) for m in train_messages(grid, 2)] == [4, 6, 3]
