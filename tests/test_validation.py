"""Every class of bad reply is refused with a one-line reason, for training and for evaluation
replies, and a reply from a node that was not asked is ignored while the round goes on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedra_core.methods import get_method
from server_app.strategy import FedRAStrategy, NodeInfo
from server_app.validation import RejectedReply, ReplyLimits, check_eval_reply, check_reply

LIMITS = ReplyLimits(max_update_norm=100.0, max_examples=1000)
SENT = {"blocks.0.a.lora_A.weight": torch.zeros(2, 3), "head.bias": torch.zeros(4)}


def _message(node_id: int = 7, kind: str = MessageType.TRAIN) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    msg = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=node_id, message_type=kind)
    msg.metadata.__dict__["_message_id"] = msg.object_id  # as a grid stamps it when it sends
    return msg


def _reply(content: dict, msg: Message | None = None) -> Message:
    return Message(RecordDict(content), reply_to=msg or _message())


def _train_reply(state=None, **metrics) -> Message:
    state = {k: v + 0.5 for k, v in SENT.items()} if state is None else state
    return _reply({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": 10, **metrics})})


def _garbage_arrays() -> ArrayRecord:
    record = ArrayRecord({k: v + 0.5 for k, v in SENT.items()})
    record["head.bias"] = Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"not a numpy array")
    return record


TRAIN_CASES = {
    "error reply": (Message(Error(code=2, reason="out of memory"), reply_to=_message()), "the node reported an error: out of memory"),
    # the SuperLink's own error reply (Flower's ErrorCode 5), not the node's
    "node unavailable": (Message(Error(code=5, reason="Node Unavailable"), reply_to=_message()),
                         "node unavailable (the SuperLink stopped hearing its heartbeats)"),
    "no arrays": (_reply({"metrics": MetricRecord({"num-examples": 10})}), "lacks its 'arrays' or 'metrics'"),
    "no metrics": (_reply({"arrays": ArrayRecord(SENT)}), "lacks its 'arrays' or 'metrics'"),
    "undecodable arrays": (_reply({"arrays": _garbage_arrays(), "metrics": MetricRecord({"num-examples": 10})}), "arrays cannot be decoded"),
    "unknown key": (_train_reply({**SENT, "backdoor.weight": torch.zeros(1)}), "unexpected key 'backdoor.weight'"),
    "missing key": (_train_reply({"head.bias": torch.ones(4)}), "missing key 'blocks.0.a.lora_A.weight'"),
    "wrong shape": (_train_reply({**SENT, "head.bias": torch.zeros(5)}), "'head.bias' has shape (5,), expected (4,)"),
    "wrong dtype": (_train_reply({**SENT, "head.bias": torch.zeros(4, dtype=torch.float64)}), "'head.bias' has dtype 'float64', expected float32"),
    "NaN": (_train_reply({**SENT, "head.bias": torch.tensor([0.0, math.nan, 0.0, 0.0])}), "'head.bias' contains NaN or Inf"),
    "huge update": (_train_reply({**SENT, "head.bias": torch.full((4,), 60.0)}), "update norm 120 exceeds max-update-norm 100"),
    "float num-examples": (_train_reply(**{"num-examples": 10.0}), "num-examples 10.0 is not an integer in 1..1000"),
    "zero num-examples": (_train_reply(**{"num-examples": 0}), "num-examples 0 is not an integer in 1..1000"),
    "too many examples": (_train_reply(**{"num-examples": 1001}), "num-examples 1001 is not an integer in 1..1000"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_training_reply_is_refused_with_its_reason(case):
    reply, reason = TRAIN_CASES[case]
    with pytest.raises(RejectedReply) as info:
        check_reply(reply, SENT, LIMITS)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_bool_num_examples_is_refused():
    # a MetricRecord cannot hold a bool: a reply whose metrics were tampered with on the way can
    reply = _train_reply()
    reply.content["metrics"].__dict__["_data"]["num-examples"] = True
    with pytest.raises(RejectedReply, match="num-examples True is not an integer"):
        check_reply(reply, SENT, LIMITS)


def test_good_training_reply_passes_with_its_update_norm():
    state, claim = check_reply(_train_reply(), SENT, LIMITS)
    assert claim.update_norm == pytest.approx(math.sqrt(10 * 0.25))  # 10 entries moved by 0.5
    assert claim.group_norms == pytest.approx({0: math.sqrt(6 * 0.25), "shared": math.sqrt(4 * 0.25)})
    assert torch.equal(state["head.bias"], torch.full((4,), 0.5))


def _eval_reply(**metrics) -> Message:
    base = {"accuracy": 0.5, "loss": 1.0, "num-examples": 10, "correct": 5}
    return _reply({"metrics": MetricRecord({**base, **metrics})}, _message(kind=MessageType.EVALUATE))


EVAL_CASES = {
    "error reply": (Message(Error(code=2, reason="disk full"), reply_to=_message()), "the node reported an error: disk full"),
    "no metrics": (_reply({"arrays": ArrayRecord(SENT)}), "lacks its 'metrics' record"),
    "missing correct": (_reply({"metrics": MetricRecord({"accuracy": 0.5, "loss": 1.0, "num-examples": 10})}), "lacks 'correct'"),
    "float num-examples": (_eval_reply(**{"num-examples": 10.0}), "num-examples 10.0 is not an integer in 1..1000"),
    "zero num-examples": (_eval_reply(**{"num-examples": 0, "correct": 0}), "num-examples 0 is not an integer"),
    "too many examples": (_eval_reply(**{"num-examples": 5000, "correct": 2500}), "num-examples 5000 is not an integer"),
    "correct above n": (_eval_reply(correct=11), "correct 11 is not an integer in 0..10"),
    "accuracy above 1": (_eval_reply(accuracy=2.0), "accuracy 2.0 lies outside [0, 1]"),
    "NaN accuracy": (_eval_reply(accuracy=math.nan), "accuracy nan lies outside [0, 1]"),
    "accuracy disagrees": (_eval_reply(accuracy=0.9), "accuracy 0.9 disagrees with correct / num-examples = 5/10"),
    "NaN loss": (_eval_reply(loss=math.nan), "loss nan is not a finite number >= 0"),
    "negative loss": (_eval_reply(loss=-1.0), "loss -1.0 is not a finite number >= 0"),
    # a causal LM's reply: accuracy and loss per response token (targets)
    "float targets": (_eval_reply(targets=40.5), "targets 40.5 is not an integer"),
    "zero targets": (_eval_reply(targets=0, correct=0, accuracy=0.0), "targets 0 is not an integer"),
    "correct above targets": (_eval_reply(targets=40, correct=41, accuracy=1.0), "correct 41 is not an integer in 0..40"),
    "accuracy not per target": (_eval_reply(targets=40, correct=5, accuracy=0.5), "accuracy 0.5 disagrees with correct / targets = 5/40"),
}


def test_token_level_evaluation_reply_is_accepted_and_pooled_by_tokens():
    from fedra_core.objectives import CAUSAL_LM

    claim = check_eval_reply(_eval_reply(targets=40, correct=30, accuracy=0.75, loss=2.0), LIMITS)
    assert (claim.num_examples, claim.targets, claim.correct) == (10, 40, 30)
    strategy = FedRAStrategy(get_method("fedra"), num_layers=2, fingerprint="f", objective=CAUSAL_LM)
    for node in (1, 2):
        strategy.register(NodeInfo(node, node, 2, "topic", num_test=10))
    strategy._eval_messages = {n: _message(n, MessageType.EVALUATE) for n in (1, 2)}
    replies = []
    for n, (targets, correct, loss) in zip((1, 2), ((40, 30, 2.0), (10, 2, 4.0))):
        replies.append(_reply({"metrics": MetricRecord({"accuracy": correct / targets, "loss": loss, "num-examples": 10,
                                                          "correct": correct, "targets": targets})}, strategy._eval_messages[n]))
    record = strategy.aggregate_evaluate(1, replies)
    assert record["targets/topic"] == 50 and record["examples/topic"] == 20
    assert record["accuracy/topic"] == pytest.approx(32 / 50) and record["loss/topic"] == pytest.approx((2.0 * 40 + 4.0 * 10) / 50)
    assert record["perplexity/topic"] == pytest.approx(math.exp((2.0 * 40 + 4.0 * 10) / 50))


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_bad_evaluation_reply_is_refused_with_its_reason(case):
    reply, reason = EVAL_CASES[case]
    with pytest.raises(RejectedReply) as info:
        check_eval_reply(reply, LIMITS)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_reply_from_a_node_not_asked_is_ignored_and_the_round_goes_on():
    strategy = FedRAStrategy(get_method("alllarge"), num_layers=2, fingerprint="f")
    for node in (1, 2):
        strategy.register(NodeInfo(node, node, 2, f"d{node}"))
    state = {f"blocks.{j}.a.lora_A.weight": torch.zeros(2) for j in range(2)} | {"head.bias": torch.zeros(2)}
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    for m in messages:
        m.metadata.__dict__["_message_id"] = m.object_id
    ones = {k: torch.ones_like(v) for k, v in state.items()}
    good = [Message(RecordDict({"arrays": ArrayRecord(ones if m.metadata.dst_node_id == 1 else state),
                                "metrics": MetricRecord({"num-examples": 5})}), reply_to=m) for m in messages]
    stranger = Message(RecordDict({"arrays": ArrayRecord({k: v * 100 for k, v in ones.items()}),
                                   "metrics": MetricRecord({"num-examples": 5})}), reply_to=_message(node_id=9))
    stranger.metadata.__dict__["_src_node_id"] = 9
    arrays, metrics = strategy.aggregate_train(1, [good[0], stranger, good[1]])
    new = arrays.to_torch_state_dict()
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in new.values())  # mean of 1 and 0; no 100
    assert list(metrics["accepted-ids"]) == [1, 2] and list(metrics["rejected-ids"]) == []
    assert np.array(metrics["allocation"]).tolist() == [1, 1, 1, 1]
