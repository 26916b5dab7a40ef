"""``server_app.exchange.send_and_receive``: messages expire with the wait, and the SuperLink's
stand-in replies for expired messages read as no reply. (The real thing, a frozen and a killed
SuperNode against a real SuperLink, is ``tests/test_faults.py``.)"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server_app.exchange import send_and_receive


def _message(node_id: int) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    msg = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=node_id, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


class _Grid:
    """Answers node 1 with metrics, node 2 with a ClientApp error, and for nodes 3 and 5 with the
    SuperLink's stand-ins (Flower's ErrorCode 3 "message unavailable", 5 "node unavailable"); the
    reply to each message becomes pullable after ``delays[node]`` pulls (0: at once; absent: never)."""

    def __init__(self, delays: dict[int, int] | None = None) -> None:
        self.ttls: list[float] = []
        self.pulls = 0
        self.delays = delays if delays is not None else {1: 0, 2: 0, 3: 0, 5: 0}
        self.pending: dict[str, Message] = {}

    def push_messages(self, messages):
        self.ttls = [m.metadata.ttl for m in messages]
        for m in messages:
            self.pending[m.metadata.message_id] = m
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        self.pulls += 1
        replies = []
        for mid in list(message_ids):
            m = self.pending[mid]
            node = m.metadata.dst_node_id
            if node not in self.delays or self.pulls <= self.delays[node]:
                continue
            del self.pending[mid]
            if node == 1:
                replies.append(Message(RecordDict({"metrics": MetricRecord({"a": 1})}), reply_to=m))
            else:
                replies.append(Message(Error(code=node, reason=f"code {node}"), reply_to=m))
        return replies


def test_messages_expire_with_the_wait_and_expired_stand_ins_read_as_no_reply():
    grid = _Grid()
    replies = send_and_receive(grid, [_message(n) for n in (1, 2, 3, 5)], 12.5)
    assert grid.ttls == [12.5] * 4 and grid.pulls == 1
    assert [r.content["metrics"]["a"] if not r.has_error() else r.error.code for r in replies] == [1, 2, 5]
    assert send_and_receive(grid, [], 3.0) == []


def test_replies_are_pulled_after_growing_pauses_until_all_came_or_the_wait_is_over(monkeypatch):
    """Pauses 0.05, 0.075, 0.1125, ... (x 1.5, at most 1 s) between pulls, not Flower's fixed 3 s; the
    last pause is cut to the time left, and nothing is pulled after the deadline."""
    import server_app.exchange as exchange

    clock = {"now": 100.0}
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr(exchange.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(exchange.time, "sleep", sleep)
    grid = _Grid({1: 3, 2: 9})  # node 1 answers at the 4th pull, node 2 at the 10th
    replies = send_and_receive(grid, [_message(1), _message(2)], 60.0)
    assert [r.error.code if r.has_error() else 1 for r in replies] == [1, 2] and grid.pulls == 10
    expected = [min(1.0, 0.05 * 1.5**k) for k in range(9)]
    assert pauses == [pytest.approx(p) for p in expected]
    assert expected[-1] == 1.0 and expected[-2] < 1.0  # capped from the 9th pause on

    pauses.clear()
    grid = _Grid({1: 0})  # node 3's message is never answered: pulls stop at the deadline
    replies = send_and_receive(grid, [_message(1), _message(3)], 2.0)
    assert [r.content["metrics"]["a"] for r in replies] == [1]
    assert sum(pauses) == pytest.approx(2.0) and pauses[-1] < 1.0  # the last pause: what was left of 2 s


def test_replies_are_matched_to_the_message_they_answer_once_strangers_and_repeats_skipped(caplog):
    from server_app.exchange import match_replies

    sent = {1: _message(1), 2: _message(2)}
    first = Message(RecordDict({"metrics": MetricRecord({"a": 1})}), reply_to=sent[1])
    repeat = Message(RecordDict({"metrics": MetricRecord({"a": 2})}), reply_to=sent[1])
    # the SuperLink's stand-in for node 2 comes with its own sender id; the message it answers decides
    stand_in = Message(Error(code=5, reason="gone"), reply_to=sent[2])
    stand_in.metadata.__dict__["_src_node_id"] = 0
    stranger = Message(RecordDict({"metrics": MetricRecord({"a": 3})}), reply_to=_message(9))
    stranger.metadata.__dict__["_src_node_id"] = 9
    with caplog.at_level("WARNING", logger="fedra"):
        matched = list(match_replies(sent, [first, stranger, repeat, stand_in], "training reply", 4))
    assert [(n, r) for n, r in matched] == [(1, first), (2, stand_in)]
    assert caplog.text.count("round 4: ignoring a training reply from node") == 2
