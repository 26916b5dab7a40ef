"""A hostile node cannot break a run: every reply field is type-checked, random replies never crash
the server, an out-of-scale update is refused by default, replies are sized before decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from app_helpers import run_inprocess
from fedra_core.methods import get_method
from server_app.discovery import NodeDiscovery
from server_app.strategy import FedRAStrategy, NodeInfo
from server_app.validation import RejectedReply, ReplyLimits, check_reply, norm_outliers
from server_app.outputs import read_metrics

L = 3
STATE = {f"blocks.{j}.attn.proj.lora_A.weight": torch.zeros(2, 4) for j in range(L)} | {"head.bias": torch.zeros(5)}


def _strategy(nodes=(1, 2, 3), **kwargs) -> FedRAStrategy:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    strategy = FedRAStrategy(get_method("alllarge"), num_layers=L, fingerprint="f", **kwargs)
    for node in nodes:
        strategy.register(NodeInfo(node, node, L, f"d{node}", 10, 8))
    return strategy


def _train_messages(strategy: FedRAStrategy) -> list[Message]:
    messages = list(strategy.configure_train(1, ArrayRecord(STATE), ConfigRecord(), grid=None))
    for m in messages:
        m.metadata.__dict__["_message_id"] = m.object_id  # as a grid stamps it when it sends
    return messages


def _answer(message: Message, content: dict) -> Message:
    reply = Message(RecordDict(content), reply_to=message)
    reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
    return reply


def _good_train(message: Message, scale: float = 0.1, **metrics) -> Message:
    gen = torch.Generator().manual_seed(message.metadata.dst_node_id)
    state = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in STATE.items()}
    return _answer(message, {"arrays": ArrayRecord(state),
                             "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0, **metrics})})


# --- every field of the audit, through the strategy ----------------------------------------------
@pytest.mark.parametrize("field, value, reason", [
    ("train-loss", [1.0], "train-loss [1.0] is not a finite number"),
    ("capacity-layers", [3], "capacity-layers [3] is not an integer"),
    ("t-train", [1.0], "t-train [1.0] is not a finite number >= 0"),
    ("t-train", -5.0, "t-train -5.0 is not a number >= 0"),
    ("capacity-layers", 2.5, "capacity-layers 2.5 is not an integer"),
    ("train-loss", math.inf, "train-loss inf is not a finite number"),
    ("steps", [1], "steps [1] is not an integer >= 0"),
])
def test_a_training_reply_with_a_bad_field_is_rejected_and_the_round_goes_on(field, value, reason):
    strategy = _strategy()
    messages = _train_messages(strategy)
    replies = [_good_train(m, **({field: value} if m.metadata.dst_node_id == 3 else {})) for m in messages]
    rejected = []
    strategy.on_reject = lambda kind, rnd, node, why: rejected.append((node, why))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and list(metrics["accepted-ids"]) == [1, 2]
    assert rejected[0][0] == 3 and reason in rejected[0][1] and "\n" not in rejected[0][1]


@pytest.mark.parametrize("field, value, reason", [
    ("accuracy", [0.5], "accuracy [0.5] lies outside [0, 1]"),
    ("loss", [1.0], "loss [1.0] is not a finite number >= 0"),
    ("correct", [4], "correct [4] is not an integer"),
    ("t-evaluate", [0.1], "t-evaluate [0.1] is not a finite number"),
    ("num-examples", 10_000_000, "num-examples 10000000 is not the 8 test examples the node reported"),
])
def test_an_evaluation_reply_with_a_bad_field_is_rejected(field, value, reason):
    strategy = _strategy()
    messages = list(strategy.configure_evaluate(1, ArrayRecord(STATE), ConfigRecord(), grid=None))
    for m in messages:
        m.metadata.__dict__["_message_id"] = m.object_id
    rejected = []
    strategy.on_reject = lambda kind, rnd, node, why: rejected.append((node, why))
    good = {"accuracy": 0.5, "loss": 1.0, "num-examples": 8, "correct": 4}
    replies = [_answer(m, {"metrics": MetricRecord({**good, **({field: value} if m.metadata.dst_node_id == 3 else {})})})
               for m in messages]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert sorted(metrics["eval-ids"]) == [1, 2] and metrics["examples"] == 16
    assert rejected[0][0] == 3 and reason in rejected[0][1]


class _QueryGrid:
    """Answers every capacity query with ``answer(message)``."""

    def __init__(self, nodes, answer):
        self.nodes, self.answer = nodes, answer
        self.replies: list[Message] = []

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
        self.replies += [self.answer(m) for m in messages]
        return [m.object_id for m in messages]

    def pull_messages(self, message_ids):
        replies, self.replies = self.replies, []
        return replies


def _query_reply(message: Message, **overrides) -> Message:
    metrics = {"capacity-layers": 2, "partition-id": -1, "num-train": 10, "num-test": 8}
    config = {"fingerprint": "f", "device": "cpu", "domain": "clinic", "eval-set": ""}
    for key, value in overrides.items():
        (metrics if key in metrics else config)[key] = value
    return _answer(message, {"metrics": MetricRecord(metrics), "config": ConfigRecord(config)})


@pytest.mark.parametrize("field, value, reason", [
    ("capacity-layers", [3], "capacity-layers [3] is not an integer"),
    ("capacity-layers", 2.9, "capacity-layers 2.9 is not an integer"),
    ("num-test", -1, "num-test -1 is not an integer in 0..1e+07"),
    ("domain", "evil\n[fedra] round 9 accepted", "is not a printable string"),
    ("domain", "x" * 1000, "is not a printable string of at most 200"),
    ("eval-set", ["a"], "eval-set ['a'] is not a printable string"),
])
def test_a_capacity_reply_with_a_bad_field_leaves_the_node_out(field, value, reason):
    strategy = _strategy(nodes=())
    discover = NodeDiscovery(timeout=1.0)
    discover(_QueryGrid([7, 8], lambda m: _query_reply(m, **({field: value} if m.metadata.dst_node_id == 8 else {}))),
             strategy, 0)
    assert list(strategy.nodes) == [7]
    assert reason in discover.reasons[8]


# --- fuzz: random well-formed messages with random record contents --------------------------------
_KEYS = ["num-examples", "train-loss", "capacity-layers", "t-train", "t-end", "steps", "examples-seen", "accuracy",
         "loss", "correct", "partition-id", "num-train", "num-test", "fingerprint", "domain", "eval-set", "device", "zz"]


def _random_value(rng: np.random.Generator, config: bool):
    kind = rng.integers(0, 9 if config else 6)
    scalars = [int(rng.integers(-3, 12)), float(rng.choice([0.5, -1.0, 1e30, math.nan, math.inf, 3.0])),
               10**int(rng.integers(0, 13)), 0]
    if kind < 3:
        return scalars[int(rng.integers(len(scalars)))]
    if kind == 3:
        return [int(v) for v in rng.integers(-2, 5, size=int(rng.integers(0, 3)))]
    if kind in (4, 5):
        return [float(v) for v in rng.normal(size=int(rng.integers(0, 3)))]
    return ["f", "", "d\n", "x" * 300, True, b"\x00"][int(rng.integers(6))]


def _random_arrays(rng: np.random.Generator, sent_keys: list[str]) -> ArrayRecord:
    record = ArrayRecord()
    keys = list(sent_keys) if rng.random() < 0.6 else list(rng.choice(sent_keys + ["evil.weight"], size=2))
    for key in keys:
        shape = STATE[key].shape if key in STATE and rng.random() < 0.7 else tuple(int(s) for s in rng.integers(0, 4, size=2))
        dtype = np.float32 if rng.random() < 0.8 else rng.choice([np.float64, np.int64, np.float16])
        value = rng.normal(size=shape).astype(dtype) * float(rng.choice([1.0, 1e30, 1e-3]))
        array = Array(value)
        if rng.random() < 0.15:  # lie in the metadata or the payload
            array = Array(dtype=str(rng.choice(["float32", "object", "<f4"])), shape=tuple(STATE.get(key, torch.zeros(1)).shape),
                          stype=str(rng.choice(["numpy.ndarray", "torch"])), data=bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8)))
        record[str(key)] = array
    return record


def _random_content(rng: np.random.Generator, sent_keys: list[str]) -> dict:
    content = {}
    for name in ("arrays", "metrics", "config"):
        if rng.random() < 0.8:
            kind = rng.choice(["arrays", "metrics", "config"]) if rng.random() < 0.1 else name
            if kind == "arrays":
                content[name] = _random_arrays(rng, sent_keys)
            elif kind == "metrics":
                vals = {str(k): _random_value(rng, False) for k in rng.choice(_KEYS, size=int(rng.integers(0, 8)))}
                content[name] = MetricRecord({k: v for k, v in vals.items() if not isinstance(v, (str, bytes, bool))})
            else:
                content[name] = ConfigRecord({str(k): _random_value(rng, True) for k in rng.choice(_KEYS, size=int(rng.integers(0, 8)))})
    return content


def test_fuzz_random_replies_never_crash_the_server():
    rng = np.random.default_rng(0)
    accepted = 0
    for trial in range(300):
        strategy = _strategy()
        messages = _train_messages(strategy)
        replies = [_answer(m, _random_content(rng, sorted(STATE))) if rng.random() < 0.7 else _good_train(m)
                   for m in messages]
        arrays, metrics = strategy.aggregate_train(1, replies)  # never raises
        accepted += int(metrics["accepted"])
        if arrays is not None:
            assert all(torch.isfinite(v).all() and v.abs().max() < 1e6 for v in arrays.to_torch_state_dict().values())
        evals = list(strategy.configure_evaluate(1, ArrayRecord(STATE), ConfigRecord(), grid=None))
        for m in evals:
            m.metadata.__dict__["_message_id"] = m.object_id
        result = strategy.aggregate_evaluate(1, [_answer(m, _random_content(rng, [])) for m in evals])
        assert result is None or all(0 <= result[k] <= 1 for k in result if k.startswith("accuracy/"))
        discover = NodeDiscovery(timeout=1.0)
        fresh = _strategy(nodes=())
        discover(_QueryGrid([5, 6], lambda m: _answer(m, _random_content(rng, []))), fresh, 0)
        assert all(1 <= n.capacity <= L for n in fresh.nodes.values())
    assert accepted > 0  # the good replies mixed in were accepted


# --- the norm bound: relative to the round, no tuning ------------------------------------------------
def test_norm_outliers_hand_worked_example():
    norms = {1: {0: 1.0, "shared": 1.0}, 2: {0: 2.0, 1: 3.0, "shared": 1.5}, 3: {0: 25.0, "shared": 1.2},
             4: {1: 1e30, "shared": 1.0}}
    out = norm_outliers(norms, ratio=10.0)
    # node 3: block 0 median of the others (1.0, 2.0) is 1.5; 25 > 15. node 4: block 1 only node 2 else (3.0)
    assert sorted(out) == [3, 4]
    assert "update norm of block 0 25 exceeds max-update-norm-ratio 10 x the median 1.5" in out[3]
    assert "block 1" in out[4]
    assert norm_outliers(norms, ratio=0) == {}
    assert norm_outliers({1: {0: 5.0}, 2: {1: 1e30}}, ratio=10.0) == {}  # nobody else holds the block: not judged


def test_one_huge_finite_update_of_two_is_rejected_by_default():
    strategy = _strategy(nodes=(1, 2))
    messages = _train_messages(strategy)
    replies = [_good_train(messages[0]), _good_train(messages[1], scale=1e30)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert list(metrics["accepted-ids"]) == [1] and list(metrics["rejected-ids"]) == [2]
    assert all(torch.isfinite(v).all() and v.abs().max() < 10 for v in arrays.to_torch_state_dict().values())


@pytest.mark.slow
def test_the_1e30_attack_through_the_apps_leaves_evaluation_finite(tmp_path):
    def attack(node_id, message, reply):
        if node_id != 103 or reply.has_error():
            return reply
        state = {k: v + 1e30 if k.startswith("blocks.") else v for k, v in reply.content["arrays"].to_torch_state_dict().items()}
        return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": reply.content["metrics"]}), reply_to=message)

    run_dir, _, _ = run_inprocess(tmp_path, intercept=attack, **{"num-server-rounds": 2})
    records = read_metrics(run_dir)
    for r in records[1:]:
        assert r["accepted"] == [101, 102] and "max-update-norm-ratio" in r["rejected"]["103"]
        assert all(math.isfinite(v) for v in r["loss"].values())


# --- sizes from the Array metadata, before decoding --------------------------------------------------
def test_a_reply_larger_than_what_was_sent_is_refused_before_decoding(monkeypatch):
    sent = {"head.bias": torch.zeros(5)}
    big = np.zeros(5_000_000, dtype=np.float32)
    lying = Array(big)
    lying.shape = (5,)  # announces the sent shape, carries 20 MB
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    msg = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=7, message_type=MessageType.TRAIN)
    reply = Message(RecordDict({"arrays": ArrayRecord({"head.bias": lying}), "metrics": MetricRecord({"num-examples": 3})}),
                    reply_to=msg)
    decoded = []
    monkeypatch.setattr(Array, "numpy", lambda self: decoded.append(1) or np.zeros(5, np.float32))
    with pytest.raises(RejectedReply, match=r"'head.bias' holds 20000128 bytes, more than its shape \(5,\) takes \(refused before decoding\)"):
        check_reply(reply, sent, ReplyLimits())
    assert not decoded
    wrong_shape = Message(RecordDict({"arrays": ArrayRecord({"head.bias": Array(np.zeros(6, np.float32))}),
                                      "metrics": MetricRecord({"num-examples": 3})}), reply_to=msg)
    with pytest.raises(RejectedReply, match=r"has shape \(6,\), expected \(5,\)"):
        check_reply(wrong_shape, sent, ReplyLimits())
    assert not decoded
