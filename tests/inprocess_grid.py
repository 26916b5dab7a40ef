"""A Ray-free Grid test double: delivers each message to the real ClientApp in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid(Grid):
    """Nodes are (node_id -> node_config); ``intercept(node_id, message, reply)`` may replace or drop
    (return None) a reply, to play a node that fails or cheats. Every message sent is kept in ``sent``."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: dict[int, dict],
        run_config: dict,
        intercept: Callable[[int, Message, Message], Message | None] | None = None,
    ) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        self.client_app = client_app
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=cfg, state=RecordDict(), run_config=run_config)
            for nid, cfg in node_configs.items()
        }
        self.intercept = intercept
        self.sent: list[Message] = []

    def set_run(self, run) -> None:  # noqa: D102
        pass

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def get_nodes(self):  # noqa: D102
        raise NotImplementedError

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Run the ClientApp on each message; a raised exception becomes an error reply, as in Flower."""
        replies = []
        for message in messages:
            self.sent.append(message)
            nid = message.metadata.dst_node_id
            try:
                reply = self.client_app(message, self.contexts[nid])
            except Exception as exc:  # the real runtime turns ClientApp exceptions into error replies
                reply = Message(Error(code=1, reason=f"{exc.__class__.__name__}: {exc}"), reply_to=message)
            if self.intercept is not None:
                reply = self.intercept(nid, message, reply)
            if reply is not None:
                replies.append(reply)
        return replies
