"""Sending a round's messages (every message expires when the server stops waiting for its reply) and
matching the replies to the messages they answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

log = logging.getLogger("fedra")

# the SuperLink's stand-in replies for a message that expired (or was deleted) before a reply came
_UNANSWERED = (ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)
# Pauses between two pulls of the replies: the first short, each next one 1.5 times longer, at most
# POLL_MAX. Flower's own send_and_receive pulls every 3 s, which adds 1.5 s on average to every
# exchange of a round (the replies of a warm node arrive within a second on a LAN).
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.05, 1.5, 1.0


def send_and_receive(grid: Grid, messages: Sequence[Message], timeout: float) -> list[Message]:
    """Send ``messages`` and wait at most ``timeout`` seconds for their replies; return the replies
    the nodes sent (a message left unanswered has none).

    The replies are pulled after a pause that starts at ``POLL_FIRST`` seconds and grows to ``POLL_MAX``
    (not Flower's fixed 3 s), until every message has one or ``timeout`` has passed.

    Each message's time to live is set to ``timeout`` (counted from when it was made), so the SuperLink
    drops a task whose round has closed instead of handing it to a node that comes back late: a node
    that was frozen, cut off or busy does not spend its next minutes on a task nobody waits for (a
    SuperNode runs one task at a time) and answers the next round's messages at once. A reply to an
    expired message is refused by the SuperLink and logged by the node; the SuperLink's own "message
    unavailable" stand-ins for expired messages are dropped here, so an expired message reads as no
    reply, whichever of the two the server polled first.
    """
    for message in messages:
        message.metadata.ttl = timeout
    if not messages:
        return []
    waiting = list(grid.push_messages(messages))  # in the order sent: the in-process grid keeps it
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    pause = POLL_FIRST
    while True:
        pulled = list(grid.pull_messages(waiting))
        replies.extend(pulled)
        answered = {r.metadata.reply_to_message_id for r in pulled}
        waiting = [i for i in waiting if i not in answered]
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(POLL_MAX, pause * POLL_GROWTH)
    return [r for r in replies if not (r.has_error() and r.error.code in _UNANSWERED)]


def match_replies(messages: Mapping[int, Message], replies: Iterable[Message], what: str, server_round: int) -> Iterator[tuple[int, Message]]:
    """Yield (node id, reply) for the first reply to each of ``messages`` (node id -> message sent).

    A reply is matched through the message it answers (the grid stamps message ids when it sends;
    a SuperLink answers for a node that went away with its own node id as sender), else through its
    sender. A reply from a node that was not asked, or a second one, is logged (``what`` names the
    kind of reply) and skipped.
    """
    node_of = {m.metadata.message_id: nid for nid, m in messages.items() if m.metadata.message_id}
    seen: set[int] = set()
    for reply in replies:
        node_id = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if node_id not in messages or node_id in seen:
            log.warning("round %d: ignoring a %s from node %d, which was not asked", server_round, what, node_id)
            continue
        seen.add(node_id)
        yield node_id, reply
