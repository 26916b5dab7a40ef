"""Node discovery: which SuperNodes take part, what each can hold, and who is left out for now."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedra_core import wire
from server_app.exchange import match_replies, send_and_receive
from server_app.strategy import FedRAStrategy, NodeInfo
from server_app.validation import RejectedReply, check_query_reply

log = logging.getLogger("fedra")


@dataclass
class NodeDiscovery:
    """Queries every connected node the strategy does not know yet (capacity, domain, counts,
    backbone fingerprint) and registers those that answer well.

    A node whose query fails (an error, no answer within ``timeout`` seconds, a bad capacity, another
    backbone) is left out with one logged line naming it and the reason, and asked again after 2, 4,
    8, ... rounds, so that a broken node costs at most one query timeout now and then. ``restored``
    (node id -> capacity, from a checkpoint) replaces the queried capacity of a node the interrupted
    run had seen: what it last reported in a reply is what the run used.
    """

    timeout: float
    restored: dict[str, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)  # why each node is left out now
    _retry_round: dict[int, int] = field(default_factory=dict)
    _failures: dict[int, int] = field(default_factory=dict)

    def __call__(self, grid: Grid, strategy: FedRAStrategy, server_round: int) -> None:
        """Update ``strategy``'s nodes before ``server_round``: drop the disconnected, register the new."""
        online = set(grid.get_node_ids())
        for gone in [n for n in strategy.nodes if n not in online]:
            log.warning("node %d is no longer connected: left out until it comes back", gone)
            del strategy.nodes[gone]
        new = sorted(n for n in online if n not in strategy.nodes and self._retry_round.get(n, 0) <= server_round)
        if not new:
            return
        messages = {
            n: Message(RecordDict({wire.CONFIG: ConfigRecord({wire.FINGERPRINT: strategy.fingerprint})}), dst_node_id=n,
                       message_type=MessageType.QUERY)
            for n in new
        }
        replies = send_and_receive(grid, list(messages.values()), self.timeout)
        answered: set[int] = set()
        for node_id, reply in match_replies(messages, replies, "capacity reply", server_round):
            answered.add(node_id)
            reason = self._register(strategy, node_id, reply)
            if reason:
                self._leave_out(node_id, server_round, reason)
        for node_id in new:
            if node_id not in answered:
                self._leave_out(node_id, server_round, f"no answer to the capacity query within {self.timeout:g} s")

    def _register(self, strategy: FedRAStrategy, node_id: int, reply: Message) -> str:
        """Register the node of a query reply; return why it is left out ("" when registered)."""
        try:
            claim = check_query_reply(reply, strategy.limits)
        except RejectedReply as exc:
            return str(exc)
        if claim.fingerprint != strategy.fingerprint:
            return f"it holds another backbone (fingerprint {claim.fingerprint}, server {strategy.fingerprint})"
        capacity = int(self.restored.pop(str(node_id), claim.capacity))
        info = NodeInfo(node_id, claim.partition_id, capacity, claim.domain, claim.num_train, claim.num_test, claim.eval_set)
        try:
            strategy.register(info)
        except ValueError as exc:
            return f"its capacity reply is unusable: {exc}"
        self._failures.pop(node_id, None)
        self._retry_round.pop(node_id, None)
        self.reasons.pop(node_id, None)
        log.info(
            "node %d: domain %s, capacity %d blocks, %d train / %d test examples, device %s",
            node_id, info.domain, info.capacity, info.num_train, info.num_test, claim.device,
        )
        return ""

    def _leave_out(self, node_id: int, server_round: int, reason: str) -> None:
        failures = self._failures[node_id] = self._failures.get(node_id, 0) + 1
        retry = server_round + 2**failures
        self._retry_round[node_id] = retry
        self.reasons[node_id] = reason
        log.warning("node %d left out: %s (asked again in round %d)", node_id, reason, retry)
