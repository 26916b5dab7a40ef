"""``server_app.exchange.send_and_receive``: messages expire with the wait, and the SuperLink's
stand-in replies for expired messages read as no reply. (The real thing, a frozen and a killed
SuperNode against a real SuperLink, is ``tests/test_faults.py``.)"""

from __future__ import annotations

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
    SuperLink's stand-ins (Flower's ErrorCode 3 "message unavailable", 5 "node unavailable")."""

    def __init__(self) -> None:
        self.ttls: list[float] = []
        self.timeout: float | None = None

    def send_and_receive(self, messages, *, timeout=None):
        self.timeout = timeout
        self.ttls = [m.metadata.ttl for m in messages]
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            if node == 1:
                replies.append(Message(RecordDict({"metrics": MetricRecord({"a": 1})}), reply_to=m))
            else:
                replies.append(Message(Error(code=node, reason=f"code {node}"), reply_to=m))
        return replies


def test_messages_expire_with_the_wait_and_expired_stand_ins_read_as_no_reply():
    grid = _Grid()
    replies = send_and_receive(grid, [_message(n) for n in (1, 2, 3, 5)], 12.5)
    assert grid.ttls == [12.5] * 4 and grid.timeout == 12.5
    assert [r.content["metrics"]["a"] if not r.has_error() else r.error.code for r in replies] == [1, 2, 5]
    assert send_and_receive(grid, [], 3.0) == []


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
