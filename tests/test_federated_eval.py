"""Federated evaluation: a node evaluates the full global model holding at most its capacity of blocks,
the strategy pools the replies per domain, bad replies are rejected, and the figures equal the
server-side evaluation of the same model on the same images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from app_helpers import TINY_RUN, write_imagefolder
from conftest import TINY_VIT
from fedra_core import LoraSettings, ModelRecipe, get_method, trainable_state
from fedra_core.evaluation import block_groups, evaluate_global_model
from runners.local import local_federation
from server_app.strategy import FedRAStrategy, NodeInfo
from server_app.validation import RejectedReply, ReplyLimits, check_eval_reply
from server_app.outputs import read_metrics


def test_block_groups_cut_the_depth_into_consecutive_groups():
    assert block_groups(12, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert block_groups(12, 12) == [list(range(12))]
    assert block_groups(3, 1) == [[0], [1], [2]]


def _global_state(backbone, method=None):
    method = method or get_method("fedra")
    torch.manual_seed(1)
    model = ModelRecipe(backbone, LoraSettings(), method).build(range(backbone.num_layers))
    state = {k: v.clone() for k, v in trainable_state(model).items()}
    for k in state:  # LoRA B starts at zero: give every adapter an effect
        state[k] = state[k] + 0.05 * torch.randn_like(state[k])
    return state


def _reference_logits(backbone, state, images):
    """Plain timm: the full model with the frozen weights, LoRA merged by hand (W + s B A) and the state's head."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TINY_VIT).eval()
    weights = load_file(str(backbone.path))
    merged = {k: v.clone() for k, v in weights.items()}
    scale = LoraSettings().alpha / LoraSettings().rank
    for key in state:
        if key.endswith("lora_A.weight"):
            base = key.replace(".lora_A.weight", ".weight")
            a, b = state[key], state[key.replace("lora_A", "lora_B")]
            # a Conv2d adapter (the patch embedding): A is a conv to r channels, B a 1x1 conv back
            merged[base] = merged[base] + scale * (b.flatten(1) @ a.flatten(1)).view(merged[base].shape)
        elif "lora_" not in key:
            merged[key] = state[key]
    model.load_state_dict(merged, strict=True)
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("capacity", [1, 5, 12])
def test_streamed_evaluation_equals_the_plain_full_model(tiny_vit, capacity):
    state = _global_state(tiny_vit)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(70, 3, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (70,), generator=gen)
    logits = _reference_logits(tiny_vit, state, images)
    correct = int((logits.argmax(1) == labels).sum())
    loss = float(torch.nn.functional.cross_entropy(logits, labels))
    # batch 16 -> chunks of 8 batches: the 70 images take two chunks, each group is read twice
    got = evaluate_global_model(ModelRecipe(tiny_vit, LoraSettings(), get_method("fedra")), state, TensorDataset(images, labels), capacity, 16)
    assert got.num_examples == 70 and got.correct == correct and got.accuracy == correct / 70
    assert math.isclose(got.loss, loss, rel_tol=1e-5)
    full = evaluate_global_model(ModelRecipe(tiny_vit, LoraSettings(), get_method("fedra")), state, TensorDataset(images, labels), 12, 16)
    assert (got.correct, got.loss) == (full.correct, full.loss)  # to the last digit


def test_streamed_evaluation_of_depthfl_uses_the_final_head(tiny_vit):
    method = get_method("depthfl")
    state = _global_state(tiny_vit, method)
    data = TensorDataset(torch.randn(20, 3, 28, 28), torch.randint(0, 10, (20,)))
    a = evaluate_global_model(ModelRecipe(tiny_vit, LoraSettings(), method), state, data, 4, 8)
    b = evaluate_global_model(ModelRecipe(tiny_vit, LoraSettings(), method), state, data, 12, 8)
    assert (a.correct, a.loss) == (b.correct, b.loss)


def _eval_reply(**metrics) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    asked = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=7, message_type="evaluate")
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=asked)


GOOD = {"accuracy": 0.25, "loss": 1.5, "num-examples": 8, "correct": 2}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"num-examples": None}, "lacks 'num-examples'"),
        ({"correct": None}, "lacks 'correct'"),
        ({"num-examples": 0}, "num-examples 0"),
        ({"accuracy": 1.5}, "accuracy 1.5 lies outside"),
        ({"accuracy": float("nan")}, "accuracy nan lies outside"),
        ({"accuracy": 0.5}, "disagrees with correct / num-examples = 2/8"),
        ({"correct": 9}, "correct 9 is not an integer in 0..8"),
        ({"loss": float("nan")}, "loss nan"),
    ],
)
def test_bad_evaluation_replies_are_rejected(change, reason):
    metrics = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(RejectedReply, match=reason):
        check_eval_reply(_eval_reply(**metrics), ReplyLimits())
    assert check_eval_reply(_eval_reply(**GOOD), ReplyLimits()).correct == 2


def test_evaluation_reply_must_count_the_examples_the_node_reported_when_queried():
    # the poisoning of the audit: a node claims 10,000,000 examples to outweigh every other node
    with pytest.raises(RejectedReply, match="num-examples 10000000 is not the 8 test examples the node reported when queried"):
        check_eval_reply(_eval_reply(**{**GOOD, "num-examples": 10_000_000, "correct": 10_000_000, "accuracy": 1.0}), ReplyLimits(), 8)
    assert check_eval_reply(_eval_reply(**GOOD), ReplyLimits(), 8).num_examples == 8


def _eval_strategy(share_eval_sets: bool) -> FedRAStrategy:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    strategy = FedRAStrategy(get_method("fedra"), num_layers=12, fingerprint="f", share_eval_sets=share_eval_sets)
    strategy.register(NodeInfo(1, -1, 12, "clinic", 500, 100, ""))
    strategy.register(NodeInfo(2, -1, 3, "clinic", 200, 50, "digits:usps"))  # claims node 3's split
    strategy.register(NodeInfo(3, 4, 6, "usps", 300, 50, "digits:usps"))
    return strategy


def test_in_deployment_every_node_evaluates_its_own_split_whatever_eval_set_it_claims():
    messages = list(_eval_strategy(False).configure_evaluate(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3]
    # where sharing is on (simulation, the operator runs every node) the claim would keep node 3 out
    messages = list(_eval_strategy(True).configure_evaluate(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2]


def test_strategy_asks_each_test_split_once_and_pools_a_domain_by_examples():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    strategy = FedRAStrategy(get_method("fedra"), num_layers=12, fingerprint="f", share_eval_sets=True)
    strategy.register(NodeInfo(1, -1, 12, "clinic", 500, 100, ""))
    strategy.register(NodeInfo(2, -1, 3, "clinic", 200, 50, ""))
    strategy.register(NodeInfo(3, 4, 6, "usps", 300, 50, "digits:usps"))
    strategy.register(NodeInfo(4, 5, 6, "usps", 300, 50, "digits:usps"))  # same split as node 3
    strategy.register(NodeInfo(5, -1, 6, "lab", 300, 0, ""))  # no test split
    messages = list(strategy.configure_evaluate(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord(), None))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3]
    counts = {1: (30, 100, 1.0), 2: (10, 50, 2.0), 3: (45, 50, 0.5)}
    replies = []
    for m in messages:
        correct, n, loss = counts[m.metadata.dst_node_id]
        rec = RecordDict({"metrics": MetricRecord({"accuracy": correct / n, "loss": loss, "num-examples": n, "correct": correct})})
        reply = Message(rec, reply_to=m)
        reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
        replies.append(reply)
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["accuracy/clinic"] == 40 / 150 and metrics["accuracy/usps"] == 45 / 50
    assert metrics["average"] == 85 / 200
    assert math.isclose(metrics["loss/clinic"], (1.0 * 100 + 2.0 * 50) / 150)
    assert metrics["examples/clinic"] == 150


def _run(tmp_path: Path, nodes: dict, intercept=None, **overrides) -> Path:
    run_config = {**TINY_RUN, "output-dir": str(tmp_path), "run-name": "run", **overrides}
    return local_federation(run_config, nodes, intercept)[0]


def _records(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir)


@pytest.mark.slow
def test_federated_and_server_side_evaluation_agree_to_the_last_digit(tmp_path):
    nodes = {101: {"partition-id": 0}, 102: {"partition-id": 1}, 103: {"partition-id": 2}}
    records = _records(_run(tmp_path, nodes, **{"server-eval-format": "dataset", "num-server-rounds": 2}))
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["accuracy"] == r["server-accuracy"]  # per domain, exactly
        assert r["average"] == pytest.approx(r["server-average"], abs=1e-12)
        assert r["examples"] == {"mnist": 100, "printed": 100, "usps": 100}
        assert sorted(r["eval-nodes"]) == [101, 102, 103] and r["eval-rejected"] == {}


@pytest.mark.slow
def test_nodes_with_only_their_own_imagefolder_train_and_evaluate_and_a_bad_eval_reply_is_dropped(tmp_path):
    nodes = {}
    for nid, (domain, cap) in zip((201, 202, 203), (("mnist", 12), ("printed", 6), ("usps", 3))):
        root = write_imagefolder(tmp_path / "data" / domain, domain, max_train=64, max_test=40)
        nodes[nid] = {"data-format": "imagefolder", "data-root": str(root), "capacity-layers": cap}

    def cheat(node_id, message, reply):
        if node_id == 203 and message.metadata.message_type == "evaluate" and not reply.has_error():
            metrics = MetricRecord({**dict(reply.content["metrics"]), "accuracy": 2.0})
            return Message(RecordDict({"metrics": metrics}), reply_to=message)
        return reply

    records = _records(_run(tmp_path / "runs", nodes, cheat, **{"num-server-rounds": 2}))
    for r in records:
        assert set(r["accuracy"]) == {"mnist", "printed"}  # usps' reply was rejected, the run went on
        assert r["examples"] == {"mnist": 40, "printed": 40}
        assert "accuracy 2.0 lies outside" in r["eval-rejected"]["203"]
    trained = [r for r in records if r["round"] > 0]
    assert all(sorted(r["accepted"]) == [201, 202, 203] for r in trained)
    assert trained[0]["node-labels"] == ["mnist (12 blocks)", "printed (6 blocks)", "usps (3 blocks)"]
    assert np.array(trained[0]["allocation"]).sum(axis=1).tolist() == [12, 6, 3]


@pytest.mark.slow
def test_server_side_imagefolder_evaluation_equals_a_node_holding_the_same_folder(tmp_path):
    held_out = write_imagefolder(tmp_path / "held-out", "printed", max_train=16, max_test=30)
    nodes = {301: {"data-format": "imagefolder", "data-root": str(held_out), "capacity-layers": 4}}
    overrides = {"server-eval-format": "imagefolder", "server-eval-root": str(held_out), "server-device": "cpu",
                 "num-server-rounds": 1}
    records = _records(_run(tmp_path / "runs", nodes, **overrides))
    for r in records:
        assert r["server-accuracy"] == {"held-out": r["accuracy"]["held-out"]}
        assert r["examples"] == {"held-out": 30}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"server-eval-format": "imagefolder"}, "config key 'server-eval-root' is empty"),
        ({"server-eval-format": "imagefolder", "server-eval-root": "/nonexistent/held"}, "'/nonexistent/held': no test/ folder"),
        ({"server-eval-format": "dataset", "server-device": "cuda"}, "server-device' = 'cuda': the server has no CUDA device"),
        ({"class-names": "a,b,c", "num-classes": 4}, "'class-names' lists 3 names but 'num-classes' = 4"),
    ],
)
def test_bad_server_evaluation_settings_stop_before_any_training(tmp_path, monkeypatch, values, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a server without a GPU
    sent = []
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        _run(tmp_path, {101: {"partition-id": 0}}, lambda n, m, r: sent.append(m) or r, **values)
    assert "\n" not in str(info.value) and not sent and not (tmp_path / "run").exists()
